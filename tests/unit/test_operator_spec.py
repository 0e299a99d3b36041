"""parse_voice: the typed TTSVoice mirror, its defaults (checked against the CRD itself) and
every refusal, each naming the field to fix."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from voicefleet_operator.spec import (
    Autoscaling,
    EnvVar,
    ModelSource,
    Resources,
    ServerTuning,
    SpecError,
    VoiceSpec,
    parse_spec,
    parse_voice,
)

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "ttsvoices.yaml"
SAMPLES = sorted((ROOT / "crds" / "samples").glob("*.yaml"))


def body(**spec: Any) -> dict[str, Any]:
    """A TTSVoice as the API server would return it, with a bundled model unless overridden."""
    spec.setdefault("model", {"bundled": "en_US-joe-medium"})
    return {
        "apiVersion": "voicefleet.io/v1alpha1",
        "kind": "TTSVoice",
        "metadata": {"name": "joe", "namespace": "voices", "uid": "u-1", "generation": 4},
        "spec": spec,
    }


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


# -- defaults -------------------------------------------------------------------------------


def test_minimal_voice_gets_every_crd_default() -> None:
    voice = parse_voice(body())
    assert (voice.name, voice.namespace, voice.uid, voice.generation) == ("joe", "voices", "u-1", 4)
    s = voice.spec
    assert s.model == ModelSource(bundled="en_US-joe-medium")
    assert (s.replicas, s.engine, s.image, s.image_pull_policy) == (
        1,
        None,  # no schema default: it follows resources.gpus
        None,
        "IfNotPresent",
    )
    assert s.runs_engine == "piper-onnx"
    assert s.env == ()
    assert s.resources == Resources(cpu="1", memory="1Gi", gpus=0)
    assert s.server == ServerTuning(
        max_queue=64,
        max_batch_size=None,
        batch_window_ms=5,
        workers=1,
        threads_per_worker=None,
        request_timeout_seconds=120,
        drain_grace_seconds=30,
        max_input_chars=4096,
    )
    assert s.autoscaling == Autoscaling(
        min_replicas=1,
        max_replicas=3,
        target_work_seconds_per_replica=10.0,
        scale_down_delay_seconds=300,
        scale_to_zero_idle_seconds=600,
        cold_start_timeout_seconds=120,
    )
    assert (s.node_selector, s.tolerations, s.affinity, s.priority_class_name) == (
        {},
        (),
        None,
        None,
    )
    assert (s.pod_labels, s.pod_annotations) == ({}, {})


def _crd_defaults() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    found: dict[str, Any] = {}

    def walk(node: dict[str, Any], path: tuple[str, ...]) -> None:
        for key, sub in (node.get("properties") or {}).items():
            if "default" in sub and not isinstance(sub["default"], dict):
                found[".".join((*path, key))] = sub["default"]
            walk(sub, (*path, key))
            if isinstance(sub.get("items"), dict):
                walk(sub["items"], (*path, key))

    walk(schema, ())
    return found


def test_parser_defaults_equal_the_crd_defaults() -> None:
    """An object stored before a default existed must parse to what the API server would fill."""
    defaults = _crd_defaults()
    assert len(defaults) >= 15, defaults
    spec = parse_voice(body()).spec
    # No CRD default for the image: the operator fills it from --default-image.
    assert "image" not in defaults
    assert spec.image is None
    for dotted, expected in defaults.items():
        if dotted.startswith(("model.", "env.", "autoscaling.target.")):
            continue  # readOnly, env value, target (checked below): not in a bare voice
        value: Any = spec
        for part in dotted.split("."):
            value = getattr(value, snake(part))
        assert value == expected, dotted


def test_first_audio_target_is_absent_by_default_and_takes_the_crd_percentile() -> None:
    """No target: the work-seconds policy; a target without percentile gets the CRD's."""
    defaults = _crd_defaults()
    assert parse_voice(body()).spec.autoscaling.target is None
    spec = parse_spec(
        {"model": {"bundled": "x"}, "autoscaling": {"target": {"timeToFirstAudioSeconds": 0.3}}}
    )
    assert spec.autoscaling.target is not None
    assert spec.autoscaling.target.time_to_first_audio_seconds == 0.3
    assert spec.autoscaling.target.percentile == defaults["autoscaling.target.percentile"] == 99


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({}, "spec.autoscaling.target.timeToFirstAudioSeconds: is required"),
        ({"timeToFirstAudioSeconds": 0}, "spec.autoscaling.target.timeToFirstAudioSeconds:"),
        ({"timeToFirstAudioSeconds": 601}, "spec.autoscaling.target.timeToFirstAudioSeconds:"),
        ({"timeToFirstAudioSeconds": 1, "percentile": 100}, "spec.autoscaling.target.percentile:"),
        ({"timeToFirstAudioSeconds": 1, "percentile": 49}, "spec.autoscaling.target.percentile:"),
        ("fast", "spec.autoscaling.target: must be an object"),
    ],
)
def test_bad_first_audio_targets_name_the_field(target: object, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec({"model": {"bundled": "x"}, "autoscaling": {"target": target}})


def test_crd_default_of_pvc_read_only_and_env_value_match() -> None:
    defaults = _crd_defaults()
    voice = parse_voice(
        body(
            model={"volume": {"persistentVolumeClaim": {"claimName": "m"}, "path": "a.onnx"}},
            env=[{"name": "A"}],
        )
    )
    assert voice.spec.model.volume is not None
    claim = voice.spec.model.volume.persistent_volume_claim
    assert claim.read_only is defaults["model.volume.persistentVolumeClaim.readOnly"]
    assert voice.spec.env == (EnvVar("A", defaults["env.value"]),)


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_every_sample_parses(sample: Path) -> None:
    doc = yaml.safe_load(sample.read_text())
    doc["metadata"].setdefault("namespace", "default")
    voice = parse_voice(doc)
    assert voice.name == doc["metadata"]["name"]
    assert voice.spec.replicas == doc["spec"].get("replicas", 1)


def test_at_least_three_samples_exist() -> None:
    assert len(SAMPLES) >= 3


# -- every field read ------------------------------------------------------------------------


def test_every_field_is_read() -> None:
    voice = parse_voice(
        body(
            replicas=7,
            engine="piper-onnx",
            model={
                "volume": {
                    "persistentVolumeClaim": {"claimName": "piper-voices", "readOnly": False},
                    "path": "voices/de_DE-thorsten-medium.onnx",
                }
            },
            image="registry.local/vf/voicefleet-server:dev",
            imagePullPolicy="Always",
            env=[{"name": "LOG_FORMAT", "value": "json"}, {"name": "B", "value": "$(LOG_FORMAT)"}],
            resources={"cpu": "500m", "memory": "2Gi", "gpus": 2},
            nodeSelector={"pool": "gpu"},
            tolerations=[{"key": "k", "operator": "Exists"}],
            affinity={"nodeAffinity": {"x": 1}},
            priorityClassName="tts-high",
            podLabels={"team": "speech"},
            podAnnotations={"a": "b"},
            server={
                "maxQueue": 9,
                "maxBatchSize": 16,
                "batchWindowMs": 0,
                "workers": 2,
                "threadsPerWorker": 3,
                "requestTimeoutSeconds": 60,
                "drainGraceSeconds": 45,
                "maxInputChars": 999,
            },
            autoscaling={
                "minReplicas": 0,
                "maxReplicas": 8,
                "targetWorkSecondsPerReplica": 2.5,
                "scaleDownDelaySeconds": 0,
                "scaleToZeroIdleSeconds": 900,
                "coldStartTimeoutSeconds": 180,
            },
        )
    )
    s = voice.spec
    assert s.replicas == 7
    assert s.model.volume is not None
    assert s.model.volume.path == "voices/de_DE-thorsten-medium.onnx"
    assert s.model.volume.persistent_volume_claim.claim_name == "piper-voices"
    assert s.model.volume.persistent_volume_claim.read_only is False
    assert (s.image, s.image_pull_policy) == ("registry.local/vf/voicefleet-server:dev", "Always")
    assert s.env == (EnvVar("LOG_FORMAT", "json"), EnvVar("B", "$(LOG_FORMAT)"))
    assert s.resources == Resources("500m", "2Gi", 2)
    assert s.node_selector == {"pool": "gpu"}
    assert s.tolerations == ({"key": "k", "operator": "Exists"},)
    assert s.affinity == {"nodeAffinity": {"x": 1}}
    assert s.priority_class_name == "tts-high"
    assert (s.pod_labels, s.pod_annotations) == ({"team": "speech"}, {"a": "b"})
    assert s.server == ServerTuning(9, 16, 0, 2, 3, 60, 45, 999)
    assert s.autoscaling == Autoscaling(0, 8, 2.5, 0, 900, 180)


def test_integer_quantities_become_strings() -> None:
    spec = parse_spec({"model": {"bundled": "x"}, "resources": {"cpu": 2, "memory": 1073741824}})
    assert spec.resources == Resources(cpu="2", memory="1073741824")


def test_integral_floats_count_as_integers() -> None:
    """JSON has one number type: some clients send 3.0 for 3."""
    assert parse_spec({"model": {"bundled": "x"}, "replicas": 3.0}).replicas == 3


def test_integer_target_work_seconds_is_a_float() -> None:
    spec = parse_spec(
        {"model": {"bundled": "x"}, "autoscaling": {"targetWorkSecondsPerReplica": 4}}
    )
    assert spec.autoscaling.target_work_seconds_per_replica == 4.0
    assert isinstance(spec.autoscaling.target_work_seconds_per_replica, float)


def test_null_fields_take_their_defaults() -> None:
    spec = parse_spec(
        {"model": {"bundled": "x"}, "server": None, "env": None, "replicas": None, "image": None}
    )
    assert spec == VoiceSpec(model=ModelSource(bundled="x"))


def test_parsed_spec_does_not_share_the_body() -> None:
    raw = body(
        tolerations=[{"key": "a"}],
        affinity={"podAntiAffinity": {"rules": [1]}},
        nodeSelector={"a": "b"},
    )
    snapshot = copy.deepcopy(raw)
    voice = parse_voice(raw)
    raw["spec"]["tolerations"][0]["key"] = "changed"
    raw["spec"]["affinity"]["podAntiAffinity"]["rules"].append(2)
    raw["spec"]["nodeSelector"]["a"] = "changed"
    assert voice.spec.tolerations == tuple(snapshot["spec"]["tolerations"])
    assert voice.spec.affinity == snapshot["spec"]["affinity"]
    assert voice.spec.node_selector == {"a": "b"}


def test_missing_uid_and_generation_are_tolerated() -> None:
    voice = parse_voice(
        {"metadata": {"name": "a", "namespace": "b"}, "spec": {"model": {"bundled": "x"}}}
    )
    assert (voice.uid, voice.generation) == ("", 0)


def test_spec_error_is_a_value_error_with_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        parse_voice(body(server={"maxQueue": 0}))
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == "spec.server.maxQueue"
    assert str(caught.value) == "spec.server.maxQueue: must be between 1 and 100000, got 0"


def test_model_source_refuses_both_or_neither_when_built_directly() -> None:
    with pytest.raises(SpecError, match="exactly one"):
        ModelSource()
    with pytest.raises(SpecError, match="exactly one"):
        ModelSource(
            bundled="a",
            volume=parse_spec(
                {
                    "model": {
                        "volume": {"persistentVolumeClaim": {"claimName": "c"}, "path": "a.onnx"}
                    }
                }
            ).model.volume,
        )


# -- refusals -------------------------------------------------------------------------------

VOLUME = {"persistentVolumeClaim": {"claimName": "models"}, "path": "a/b.onnx"}


def vol(**changes: Any) -> dict[str, Any]:
    v = copy.deepcopy(VOLUME)
    v.update(changes)
    return {"volume": v}


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("spec not an object", {"__spec__": [1]}, "spec", "must be an object"),
    ("no model", {"model": None}, "spec.model", "exactly one"),
    ("empty model", {"model": {}}, "spec.model", "exactly one"),
    (
        "both model sources",
        {"model": {"bundled": "x", **vol()}},
        "spec.model",
        "exactly one",
    ),
    ("bundled with a slash", {"model": {"bundled": "../etc"}}, "spec.model.bundled", "not a voice"),
    ("bundled too long", {"model": {"bundled": "a" * 64}}, "spec.model.bundled", "not a voice"),
    ("bundled not a string", {"model": {"bundled": 5}}, "spec.model.bundled", "must be a string"),
    ("bundled empty", {"model": {"bundled": ""}}, "spec.model.bundled", "must not be empty"),
    (
        "volume without claim",
        {"model": {"volume": {"path": "a.onnx"}}},
        "spec.model.volume.persistentVolumeClaim",
        "required",
    ),
    (
        "claim without name",
        {"model": {"volume": {"persistentVolumeClaim": {}, "path": "a.onnx"}}},
        "spec.model.volume.persistentVolumeClaim.claimName",
        "required",
    ),
    (
        "claim name uppercase",
        {"model": vol(persistentVolumeClaim={"claimName": "Models"})},
        "spec.model.volume.persistentVolumeClaim.claimName",
        "not a valid",
    ),
    (
        "readOnly not a bool",
        {"model": vol(persistentVolumeClaim={"claimName": "m", "readOnly": "yes"})},
        "spec.model.volume.persistentVolumeClaim.readOnly",
        "true or false",
    ),
    (
        "path missing",
        {"model": {"volume": {"persistentVolumeClaim": {"claimName": "m"}}}},
        "spec.model.volume.path",
        "required",
    ),
    ("absolute path", {"model": vol(path="/etc/x.onnx")}, "spec.model.volume.path", "relative"),
    ("dot-dot path", {"model": vol(path="a/../../x.onnx")}, "spec.model.volume.path", "'..'"),
    ("not onnx", {"model": vol(path="a/b.onnx.json")}, "spec.model.volume.path", ".onnx"),
    ("empty segment", {"model": vol(path="a//b.onnx")}, "spec.model.volume.path", "empty"),
    ("dot segment", {"model": vol(path="./b.onnx")}, "spec.model.volume.path", "'.'"),
    ("replicas negative", {"replicas": -1}, "spec.replicas", "between 0 and 1000"),
    ("replicas too many", {"replicas": 1001}, "spec.replicas", "between 0 and 1000"),
    ("replicas a string", {"replicas": "3"}, "spec.replicas", "must be an integer"),
    ("replicas a bool", {"replicas": True}, "spec.replicas", "must be an integer"),
    ("replicas fractional", {"replicas": 1.5}, "spec.replicas", "must be an integer"),
    ("unknown engine", {"engine": "coqui"}, "spec.engine", "piper-onnx"),
    ("pull policy case", {"imagePullPolicy": "always"}, "spec.imagePullPolicy", "one of"),
    ("image empty", {"image": ""}, "spec.image", "must not be empty"),
    ("env not a list", {"env": {"A": "b"}}, "spec.env", "must be a list"),
    ("env item not object", {"env": ["A=b"]}, "spec.env[0]", "must be an object"),
    ("env without name", {"env": [{"value": "x"}]}, "spec.env[0].name", "required"),
    ("env bad name", {"env": [{"name": "1A"}]}, "spec.env[0].name", "not a valid"),
    ("env dotted name", {"env": [{"name": "A.B"}]}, "spec.env[0].name", "not a valid"),
    (
        "env VOICEFLEET_",
        {"env": [{"name": "VOICEFLEET_MAX_QUEUE", "value": "1"}]},
        "spec.env[0].name",
        "spec.server",
    ),
    ("env POD_IP", {"env": [{"name": "POD_IP", "value": "x"}]}, "spec.env[0].name", "operator"),
    ("env twice", {"env": [{"name": "A"}, {"name": "A"}]}, "spec.env[1].name", "twice"),
    ("env value number", {"env": [{"name": "A", "value": 1}]}, "spec.env[0].value", "string"),
    ("env too many", {"env": [{"name": f"A{i}"} for i in range(65)]}, "spec.env", "at most 64"),
    ("cpu a bool", {"resources": {"cpu": True}}, "spec.resources.cpu", "quantity"),
    ("cpu a float", {"resources": {"cpu": 0.5}}, "spec.resources.cpu", "quantity"),
    ("memory blank", {"resources": {"memory": " "}}, "spec.resources.memory", "empty"),
    ("gpus too many", {"resources": {"gpus": 17}}, "spec.resources.gpus", "between 0 and 16"),
    ("resources a list", {"resources": []}, "spec.resources", "must be an object"),
    ("node selector value", {"nodeSelector": {"a": 1}}, "spec.nodeSelector", "string"),
    ("node selector list", {"nodeSelector": ["a"]}, "spec.nodeSelector", "map"),
    ("toleration not object", {"tolerations": ["x"]}, "spec.tolerations[0]", "object"),
    ("tolerations object", {"tolerations": {"key": "x"}}, "spec.tolerations", "list"),
    ("affinity a list", {"affinity": []}, "spec.affinity", "object"),
    ("priority class", {"priorityClassName": "High"}, "spec.priorityClassName", "not a valid"),
    (
        "reserved pod label",
        {"podLabels": {"voicefleet.io/voice": "other"}},
        "spec.podLabels",
        "operator owns",
    ),
    (
        "app.kubernetes.io label",
        {"podLabels": {"app.kubernetes.io/name": "x"}},
        "spec.podLabels",
        "operator owns",
    ),
    ("annotation value", {"podAnnotations": {"a": True}}, "spec.podAnnotations", "string"),
    ("maxQueue zero", {"server": {"maxQueue": 0}}, "spec.server.maxQueue", "between"),
    ("maxBatchSize big", {"server": {"maxBatchSize": 257}}, "spec.server.maxBatchSize", "between"),
    ("window negative", {"server": {"batchWindowMs": -1}}, "spec.server.batchWindowMs", "between"),
    ("workers zero", {"server": {"workers": 0}}, "spec.server.workers", "between"),
    (
        "threads zero",
        {"server": {"threadsPerWorker": 0}},
        "spec.server.threadsPerWorker",
        "between",
    ),
    (
        "timeout zero",
        {"server": {"requestTimeoutSeconds": 0}},
        "spec.server.requestTimeoutSeconds",
        "between",
    ),
    (
        "drain zero",
        {"server": {"drainGraceSeconds": 0}},
        "spec.server.drainGraceSeconds",
        "between",
    ),
    ("input chars", {"server": {"maxInputChars": 100001}}, "spec.server.maxInputChars", "between"),
    ("server a string", {"server": "fast"}, "spec.server", "must be an object"),
    (
        "min negative",
        {"autoscaling": {"minReplicas": -1}},
        "spec.autoscaling.minReplicas",
        "between",
    ),
    ("max zero", {"autoscaling": {"maxReplicas": 0}}, "spec.autoscaling.maxReplicas", "between"),
    (
        "target zero",
        {"autoscaling": {"targetWorkSecondsPerReplica": 0}},
        "spec.autoscaling.targetWorkSecondsPerReplica",
        "> 0",
    ),
    (
        "target infinite",
        {"autoscaling": {"targetWorkSecondsPerReplica": float("inf")}},
        "spec.autoscaling.targetWorkSecondsPerReplica",
        "> 0",
    ),
    (
        "target too big",
        {"autoscaling": {"targetWorkSecondsPerReplica": 3600.5}},
        "spec.autoscaling.targetWorkSecondsPerReplica",
        "3600",
    ),
    (
        "target a string",
        {"autoscaling": {"targetWorkSecondsPerReplica": "10"}},
        "spec.autoscaling.targetWorkSecondsPerReplica",
        "number",
    ),
    (
        "idle zero",
        {"autoscaling": {"scaleToZeroIdleSeconds": 0}},
        "spec.autoscaling.scaleToZeroIdleSeconds",
        "between",
    ),
    (
        "cold start",
        {"autoscaling": {"coldStartTimeoutSeconds": 3601}},
        "spec.autoscaling.coldStartTimeoutSeconds",
        "between",
    ),
    (
        "scale down delay",
        {"autoscaling": {"scaleDownDelaySeconds": 86401}},
        "spec.autoscaling.scaleDownDelaySeconds",
        "between",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_refusals_name_the_field(changes: dict[str, Any], field: str, words: str) -> None:
    raw = body()
    if "__spec__" in changes:
        raw["spec"] = changes["__spec__"]
    else:
        raw["spec"].update(changes)
    with pytest.raises(SpecError) as caught:
        parse_voice(raw)
    assert caught.value.field == field
    message = str(caught.value)
    assert message.startswith(f"{field}: "), message
    assert words in message


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"namespace": "n"}, "metadata.name"),
        ({"name": "", "namespace": "n"}, "metadata.name"),
        ({"name": "a"}, "metadata.namespace"),
        (None, "metadata.name"),
    ],
)
def test_refusals_of_metadata(metadata: dict[str, Any] | None, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_voice({"metadata": metadata, "spec": {"model": {"bundled": "x"}}})
    assert caught.value.field == field


def test_replicas_outside_autoscaling_bounds_still_parse() -> None:
    """The scale subresource is the one writer of replicas; the operator follows it."""
    spec = parse_spec({"model": {"bundled": "x"}, "replicas": 9, "autoscaling": {"maxReplicas": 2}})
    assert spec.replicas == 9


def test_volume_path_with_dots_inside_names_is_fine() -> None:
    spec = parse_spec({"model": vol(path="v1..2/de_DE-thorsten.medium.onnx")})
    assert spec.model.volume is not None
    assert spec.model.volume.path == "v1..2/de_DE-thorsten.medium.onnx"


# -- the pure layer ----------------------------------------------------------------------------


def test_parses_a_kopf_body_like_a_dict() -> None:
    """Handlers pass kopf's read-only Body views straight in."""
    import kopf

    raw = body(env=[{"name": "A", "value": "1"}], nodeSelector={"pool": "tts"})
    assert parse_voice(kopf.Body(cast("kopf.RawBody", raw))) == parse_voice(raw)


def test_the_pure_modules_import_neither_kopf_nor_kubernetes() -> None:
    """The core is tested without a cluster; the layering that allows it is checked here."""
    code = (
        "import sys\n"
        "import voicefleet_operator.spec\n"
        "import voicefleet_operator.builders, voicefleet_operator.conditions\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('kopf', 'kubernetes'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("engine", "gpus", "runs"),
    [
        (None, 0, "piper-onnx"),
        (None, 1, "vits-torch"),  # the GPU default: batched torch passes
        ("piper-onnx", 2, "piper-onnx"),  # a written engine always wins
        ("simulated", 0, "simulated"),
    ],
)
def test_an_unset_engine_follows_the_gpus(engine: str | None, gpus: int, runs: str) -> None:
    spec: dict[str, Any] = {"model": {"bundled": "en_US-joe-medium"}, "resources": {"gpus": gpus}}
    if engine is not None:
        spec["engine"] = engine
    assert parse_spec(spec).runs_engine == runs
