"""The TTSVoice CRD manifest, read as plain YAML: no cluster.

These checks catch what the API server would accept but users would suffer from: a field
without a description (`kubectl explain` shows nothing), an unbounded number or string (no
guard against nonsense, and CEL rules whose cost the server cannot bound), a contract name
spelled differently from what the operator reads, or a sample that no longer matches the
schema. tests/integration/test_crd_admission.py checks the same manifest on a real API server.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "ttsvoices.yaml"
PEERING_PATH = REPO / "crds" / "kopf-peering.yaml"
SAMPLES = sorted((REPO / "crds" / "samples").glob("*.yaml"))

Schema = Mapping[str, Any]


@functools.cache
def _parsed_crd() -> dict[str, Any]:
    """The manifest parsed once per run (PyYAML's pure-Python parse took ~0.1 s a test)."""
    docs = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    assert len(docs) == 1, "crds/ttsvoices.yaml holds exactly one object"
    crd: dict[str, Any] = docs[0]
    return crd


def load_crd() -> dict[str, Any]:
    """A fresh copy of the manifest: a test may change what it got."""
    return copy.deepcopy(_parsed_crd())


def version(crd: Mapping[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == ["v1alpha1"]
    v: dict[str, Any] = versions[0]
    return v


def root_schema() -> Schema:
    schema: Schema = version(load_crd())["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node below `schema`, with a readable path (`items` as [], maps as {})."""
    for name, child in schema.get("properties", {}).items():
        child_path = f"{path}.{name}" if path else name
        yield child_path, child
        yield from walk(child, child_path)
    if isinstance(schema.get("items"), Mapping):
        yield f"{path}[]", schema["items"]
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield f"{path}{{}}", schema["additionalProperties"]
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def node(path: str) -> Schema:
    """The schema node at a dotted path such as `spec.autoscaling.minReplicas`."""
    current = root_schema()
    for part in path.split("."):
        current = current["properties"][part]
    return current


def is_int_or_string(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string"))


# --- names, scope, subresources, columns -------------------------------------------------


def test_names_scope_and_group_are_the_contract() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "ttsvoices.voicefleet.io"
    spec = crd["spec"]
    assert spec["group"] == "voicefleet.io"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert names["kind"] == "TTSVoice"
    assert names["plural"] == "ttsvoices"
    assert names["singular"] == "ttsvoice"
    assert names["shortNames"] == ["ttsv"]
    assert names["categories"] == ["voicefleet"]
    v = version(crd)
    assert v["served"] is True
    assert v["storage"] is True


def test_status_and_scale_subresources() -> None:
    sub = version(load_crd())["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    # The paths the scale subresource names must exist with the right types.
    assert node("spec.replicas")["type"] == "integer"
    assert node("status.replicas")["type"] == "integer"
    assert node("status.selector")["type"] == "string"


def test_printer_columns() -> None:
    columns = {c["name"]: c for c in version(load_crd())["additionalPrinterColumns"]}
    expected = {
        "Engine": ".status.engine",  # spec.engine, or the GPU/CPU default it resolved to
        "Model": ".spec.model.bundled",
        "Desired": ".spec.replicas",
        "Ready": ".status.readyReplicas",
        "Queue": ".status.queueWorkSeconds",  # work-seconds: what the autoscaler scales on
        "Status": '.status.conditions[?(@.type=="Ready")].status',
        "Age": ".metadata.creationTimestamp",
    }
    for name, json_path in expected.items():
        assert columns[name]["jsonPath"] == json_path, name
        assert columns[name].get("priority", 0) == 0, f"{name} shows in plain `kubectl get`"
    # In the order the issue names them: engine, desired, ready, queue, age.
    shown = [c["name"] for c in version(load_crd())["additionalPrinterColumns"]]
    shown = [n for n in shown if columns[n].get("priority", 0) == 0]
    order = [shown.index(n) for n in ("Engine", "Desired", "Ready", "Queue", "Age")]
    assert order == sorted(order)
    for column in columns.values():
        if column["type"] != "date":
            assert column["description"], column["name"]


# --- every field teaches itself and is bounded -------------------------------------------


def test_every_field_has_a_description() -> None:
    root = root_schema()
    assert root.get("description")
    missing = [
        path
        for path, schema in walk(root)
        # The API server owns metadata's schema; a CRD may only narrow name/generateName.
        if path != "metadata" and not str(schema.get("description", "")).strip()
    ]
    assert missing == []


def test_every_number_is_bounded() -> None:
    unbounded = [
        path
        for path, schema in walk(root_schema())
        if schema.get("type") in ("integer", "number")
        and ("minimum" not in schema or "maximum" not in schema)
    ]
    assert unbounded == []


def test_bounds_survive_json_numbers() -> None:
    """The API server reads bounds as float64: above 2**53 an int64 bound wraps negative."""
    too_big = [
        path
        for path, schema in walk(root_schema())
        for key in ("minimum", "maximum")
        if abs(schema.get(key, 0)) > 2**53 - 1
    ]
    assert too_big == []


def test_defaults_are_named_in_descriptions() -> None:
    """`kubectl explain` shows descriptions but not defaults, so descriptions must say them."""
    silent = [
        path
        for path, schema in walk(root_schema())
        if "default" in schema
        and schema.get("type") != "object"
        and "default" not in schema["description"].lower()
    ]
    assert silent == []


def test_every_string_is_bounded() -> None:
    unbounded = [
        path
        for path, schema in walk(root_schema())
        if (schema.get("type") == "string" or is_int_or_string(schema))
        and not {"maxLength", "enum", "pattern"} & schema.keys()
    ]
    assert unbounded == []


def test_every_list_and_map_is_bounded() -> None:
    """CEL needs these to estimate a rule's cost; the API server refuses rules it cannot bound."""
    unbounded = [
        path
        for path, schema in walk(root_schema())
        if (schema.get("type") == "array" and "maxItems" not in schema)
        or (
            isinstance(schema.get("additionalProperties"), Mapping)
            and "maxProperties" not in schema
        )
    ]
    assert unbounded == []


def all_rules() -> list[tuple[str, Mapping[str, Any]]]:
    root = root_schema()
    nodes = [("", root), *walk(root)]
    return [(path, rule) for path, s in nodes for rule in s.get("x-kubernetes-validations", [])]


def test_every_cel_rule_explains_itself() -> None:
    rules = all_rules()
    assert len(rules) >= 10
    for path, rule in rules:
        assert rule["rule"].strip(), path
        text = rule.get("message") or rule.get("messageExpression")
        assert text, f"{path}: a rule needs a message that says what to fix"
        assert len(text) > 30, f"{path}: {text!r} is too short to say what to fix"
        if "reason" in rule:
            assert rule["reason"] in {
                "FieldValueInvalid",
                "FieldValueForbidden",
                "FieldValueRequired",
                "FieldValueDuplicate",
            }


def test_cross_field_rules_are_present() -> None:
    """The contract's CEL rules, found by what they check (not by exact text)."""
    rules = " ".join(r["rule"] for _, r in all_rules())
    assert "self.minReplicas <= self.maxReplicas" in rules
    assert "self.replicas <= self.autoscaling.maxReplicas" in rules
    assert "self.replicas >= self.autoscaling.minReplicas" in rules
    assert (
        "(has(self.bundled) ? 1 : 0) + (has(self.volume) ? 1 : 0) + (has(self.url) ? 1 : 0) == 1"
        in " ".join(rules.split())
    )
    assert "has(self.url) == has(self.sha256)" in rules
    assert "VOICEFLEET_" in rules
    assert "voicefleet.io/" in rules
    assert "isQuantity" in rules


# --- contract field names and defaults ---------------------------------------------------

CONTRACT_DEFAULTS: dict[str, Any] = {
    "spec.replicas": 1,
    "spec.imagePullPolicy": "IfNotPresent",
    "spec.model.volume.persistentVolumeClaim.readOnly": True,
    "spec.resources.cpu": "1",
    "spec.resources.memory": "1Gi",
    "spec.resources.gpus": 0,
    "spec.server.maxQueue": 64,
    "spec.server.batchWindowMs": 5,
    "spec.server.workers": 1,
    "spec.server.requestTimeoutSeconds": 120,
    "spec.server.drainGraceSeconds": 30,
    "spec.server.maxInputChars": 4096,
    "spec.autoscaling.minReplicas": 1,
    "spec.autoscaling.maxReplicas": 3,
    "spec.autoscaling.targetWorkSecondsPerReplica": 10,
    "spec.autoscaling.scaleDownDelaySeconds": 300,
    "spec.autoscaling.scaleToZeroIdleSeconds": 600,
    "spec.autoscaling.coldStartTimeoutSeconds": 120,
    "spec.autoscaling.enabled": True,
}

CONTRACT_BOUNDS: dict[str, tuple[int, int]] = {
    "spec.replicas": (0, 1000),
    "spec.resources.gpus": (0, 16),
    "spec.server.maxQueue": (1, 100000),
    "spec.server.maxBatchSize": (1, 256),
    "spec.server.batchWindowMs": (0, 1000),
    "spec.server.workers": (1, 64),
    "spec.server.threadsPerWorker": (1, 256),
    "spec.server.requestTimeoutSeconds": (1, 3600),
    "spec.server.drainGraceSeconds": (1, 3600),
    "spec.server.maxInputChars": (1, 100000),
    "spec.autoscaling.minReplicas": (0, 1000),
    "spec.autoscaling.maxReplicas": (1, 1000),
    "spec.autoscaling.scaleDownDelaySeconds": (0, 86400),
    "spec.autoscaling.scaleToZeroIdleSeconds": (1, 86400),
    "spec.autoscaling.coldStartTimeoutSeconds": (1, 3600),
}

CONTRACT_FIELDS = [
    "spec.model.bundled",
    "spec.model.volume.persistentVolumeClaim.claimName",
    "spec.model.volume.path",
    "spec.env",
    "spec.nodeSelector",
    "spec.tolerations",
    "spec.affinity",
    "spec.priorityClassName",
    "spec.podLabels",
    "spec.podAnnotations",
    "status.readyReplicas",
    "status.desiredReplicas",
    "status.queueDepth",
    "status.queueWorkSeconds",
    "status.endpoint",
    "status.lastScaleTime",
    "status.autoscaling.desiredReplicas",
    "status.autoscaling.idleSince",
    "status.autoscaling.lastScaleReason",
    "status.observedGeneration",
    "status.conditions",
]


@pytest.mark.parametrize(("path", "default"), sorted(CONTRACT_DEFAULTS.items()))
def test_contract_defaults(path: str, default: Any) -> None:
    assert node(path)["default"] == default


@pytest.mark.parametrize(("path", "bounds"), sorted(CONTRACT_BOUNDS.items()))
def test_contract_bounds(path: str, bounds: tuple[int, int]) -> None:
    schema = node(path)
    assert schema["type"] == "integer"
    assert (schema["minimum"], schema["maximum"]) == bounds


@pytest.mark.parametrize("path", CONTRACT_FIELDS)
def test_contract_fields_exist(path: str) -> None:
    assert node(path)["description"]


def test_image_has_no_crd_default() -> None:
    """Unset, the operator fills it from --default-image (its own version's image)."""
    image = node("spec.image")
    assert "default" not in image
    assert (image["minLength"], image["maxLength"]) == (1, 512)
    assert "--default-image" in image["description"]


def test_target_work_seconds_must_be_positive() -> None:
    schema = node("spec.autoscaling.targetWorkSecondsPerReplica")
    assert schema["type"] == "number"
    assert schema["minimum"] == 0
    assert schema["exclusiveMinimum"] is True
    assert schema["maximum"] == 3600


def test_parent_objects_default_to_empty_so_nested_defaults_apply() -> None:
    """The API server defaults a nested field only when its parent object exists."""
    for path in ("spec.resources", "spec.server", "spec.autoscaling"):
        assert node(path)["default"] == {}, path


def test_conditions_are_a_map_keyed_by_type() -> None:
    conditions = node("status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]
    assert conditions["items"]["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_env_is_a_map_keyed_by_name() -> None:
    env = node("spec.env")
    assert env["x-kubernetes-list-type"] == "map"
    assert env["x-kubernetes-list-map-keys"] == ["name"]
    assert env["items"]["required"] == ["name"]


# --- defaults and samples agree with the schema ------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def has_type(value: Any, kind: str) -> bool:
    """JSON types as the API server sees them (a YAML `true` is not an integer)."""
    if kind != "boolean" and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[kind])


def check(value: Any, schema: Schema, path: str = "") -> list[str]:
    """A small structural validator: types, unknown fields, required, enums and bounds.

    It is the seam this test owns (the API server, with CEL, is checked by the integration
    test); it lets a sample that drifted from the schema fail without a cluster.
    """
    errors: list[str] = []
    where = path or "<root>"
    if is_int_or_string(schema):
        if isinstance(value, bool) or not isinstance(value, int | str):
            return [f"{where}: want integer or string, got {value!r}"]
        if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: longer than {schema['maxLength']}")
        return errors
    kind = schema.get("type")
    if kind is None:
        return errors
    if not has_type(value, kind):
        return [f"{where}: want {kind}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if kind in ("integer", "number"):
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") and value == low):
                errors.append(f"{where}: {value} below minimum {low}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} above maximum {schema['maximum']}")
    if kind == "string":
        if len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if len(value) < schema.get("minLength", 0):
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if kind == "array":
        if len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{where}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            errors += check(item, schema.get("items", {}), f"{path}[{i}]")
    if kind == "object":
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing required {key}")
        for key, item in value.items():
            child = f"{path}.{key}" if path else key
            if key in properties:
                errors += check(item, properties[key], child)
            elif isinstance(extra, Mapping):
                errors += check(item, extra, child)
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and path != "metadata":
                errors.append(f"{child}: unknown field")
    return errors


def test_every_default_satisfies_its_own_schema() -> None:
    for path, schema in walk(root_schema()):
        if "default" in schema:
            assert check(schema["default"], schema, path) == []


def test_the_validator_catches_bad_input() -> None:
    """The sample check below is only worth something if this seam can fail."""
    bad = {
        "apiVersion": "voicefleet.io/v1alpha1",
        "kind": "TTSVoice",
        "metadata": {"name": "bad"},
        "spec": {
            "replicas": "two",
            "engine": "tacotron",
            "model": {"bundled": "../etc/passwd", "volume": {"path": "x.onnx"}},
            "resources": {"gpus": 17, "cpu": 1.5},
            "server": {"maxQueue": 0, "maxQueu": 5},
            "autoscaling": {"targetWorkSecondsPerReplica": 0},
        },
    }
    errors = check(bad, root_schema())
    for fragment in (
        "spec.replicas: want integer",
        "spec.engine: 'tacotron' not in",
        "spec.model.bundled: '../etc/passwd' does not match",
        "spec.model.volume: missing required persistentVolumeClaim",
        "spec.resources.gpus: 17 above maximum 16",
        "spec.resources.cpu: want integer or string",
        "spec.server.maxQueue: 0 below minimum 1",
        "spec.server.maxQueu: unknown field",
        "spec.autoscaling.targetWorkSecondsPerReplica: 0 below minimum 0",
    ):
        assert any(fragment in e for e in errors), (fragment, errors)


def test_there_are_samples() -> None:
    names = {p.name for p in SAMPLES}
    assert {"en-us-joe.yaml", "pvc-voice.yaml"} <= names


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_sample_matches_the_schema(sample: Path) -> None:
    text = sample.read_text()
    assert text.startswith("#"), "samples open with a comment that tells users what they get"
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert len(docs) == 1
    voice = docs[0]
    assert voice["apiVersion"] == "voicefleet.io/v1alpha1"
    assert voice["kind"] == "TTSVoice"
    assert "namespace" not in voice["metadata"], "samples apply into the caller's namespace"
    assert check(voice, root_schema()) == []
    # The cross-field rules too, for the values the sample spells out.
    spec = voice["spec"]
    scaling = spec.get("autoscaling", {})
    low, high = scaling.get("minReplicas", 1), scaling.get("maxReplicas", 3)
    assert low <= spec.get("replicas", 1) <= high
    assert sum(source in spec["model"] for source in ("bundled", "volume", "url")) == 1


def test_bundled_sample_is_small_and_single() -> None:
    voice = yaml.safe_load((REPO / "crds" / "samples" / "en-us-joe.yaml").read_text())
    spec = voice["spec"]
    assert spec["model"] == {"bundled": "en_US-joe-medium"}
    assert spec["replicas"] == 1
    assert spec["resources"] == {"cpu": "500m", "memory": "512Mi"}
    assert spec["autoscaling"]["minReplicas"] == spec["autoscaling"]["maxReplicas"] == 1


def test_pvc_sample_may_scale_to_four() -> None:
    spec = yaml.safe_load((REPO / "crds" / "samples" / "pvc-voice.yaml").read_text())["spec"]
    assert spec["model"]["volume"]["persistentVolumeClaim"]["claimName"]
    assert spec["model"]["volume"]["path"].endswith(".onnx")
    assert spec["autoscaling"]["maxReplicas"] == 4


# --- the API reference keeps up with the schema -------------------------------------------

DOC_PATH = REPO / "docs" / "ttsvoice-api.md"


def squash(text: str) -> str:
    return " ".join(text.split())


def test_api_doc_names_every_field() -> None:
    doc = DOC_PATH.read_text()
    missing = [
        path
        for path, _ in walk(root_schema())
        if path.startswith(("spec.", "status."))
        and not path.endswith(("[]", "{}"))
        and f"`{path.rsplit('.', 1)[-1].removesuffix('[]')}" not in doc
        and f"`{path.removesuffix('[]')}" not in doc
    ]
    assert missing == []


def test_api_doc_quotes_every_cel_message() -> None:
    doc = squash(DOC_PATH.read_text())
    missing = [rule["message"] for _, rule in all_rules() if squash(rule["message"]) not in doc]
    assert missing == []


# --- kopf peering ------------------------------------------------------------------------


def test_kopf_peering_crds() -> None:
    docs = {d["spec"]["names"]["kind"]: d for d in yaml.safe_load_all(PEERING_PATH.read_text())}
    assert set(docs) == {"KopfPeering", "ClusterKopfPeering"}
    expected = {
        "KopfPeering": ("kopfpeerings", "Namespaced"),
        "ClusterKopfPeering": ("clusterkopfpeerings", "Cluster"),
    }
    for kind, (plural, scope) in expected.items():
        crd = docs[kind]
        assert crd["metadata"]["name"] == f"{plural}.kopf.dev"
        assert crd["spec"]["group"] == "kopf.dev"
        assert crd["spec"]["scope"] == scope
        assert crd["spec"]["names"]["plural"] == plural
        v = crd["spec"]["versions"][0]
        assert (v["name"], v["served"], v["storage"]) == ("v1", True, True)
        # kopf writes one free-form entry per peer under .status.
        status = v["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
