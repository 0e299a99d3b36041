"""Bring your own voice on the real node: url models fetched by pods, checked, cached, rolled.

The files are served from this host on the node's bridge address (``node.NODE_IP``, in
the pod range), where pods reach it: an HTTPS file server with a private CA (the pods are
told to trust it through ``spec.model.caConfigMap``) that wants a bearer token (from
``spec.model.credentialsSecret``) and keeps its own request log, and SeaweedFS's S3
gateway, built from its Go module, which checks SigV4 signatures against the one identity
it is given (``modelservers`` says more). Both serve the bundled voice's real ``.onnx``
and ``.onnx.json``, so a voice pod runs piper-onnx on them.

One operator serves the module, with the per-node cache on (``--model-cache-dir``, a
directory the pods' uid owns) and NetworkPolicies on (``--network-policy-from``: only a
router may call the pods), so the fetch runs under the policy a chart install writes.
Every voice is applied at once by the module fixture (two healthy, five broken), so the
pods start side by side. The tests then read what each shows:

- the HTTPS voice and the S3 voice become Ready and speak at their Services;
- a wrong digest, a missing object, a refused token, an unknown S3 access key and a
  right access key signed with a wrong secret each end in ``Degraded`` with the cause,
  naming the URL and no credential, within 30 s of the apply, and the digest failure
  never starts a server or leaves a file in the cache;
- a model change (a new config pin) under load through the Service: no failed request;
- a second replica on the node makes no request (the file server's log, by peer address);
- the per-node cache keeps a refused credential refused: a download made with a Secret is
  shared only within its namespace and Secret (the refused token's voice finds nothing).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from modelservers import SEAWEEDFS_KEY as S3_KEY
from modelservers import SEAWEEDFS_SECRET as S3_SECRET
from modelservers import (
    TOKEN,
    FileServer,
    https_file_server,
    make_ca_and_server_cert,
    seaweedfs,
    sha,
)
from nodeclients import rolled_out, steady_load
from operatorprocs import condition, degraded_with, new_operator, voice, voice_manifest

from voicefleet_inference.engines.registry import BUNDLED_VOICE, resolve_piper_model
from voicefleet_localcluster import node
from voicefleet_localcluster.testing import LocalCluster, wait_for

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.seaweedfs,
    pytest.mark.timeout(300),
]

POD_UID = 65532
BUCKET = "voices"
BAD_TOKEN = "wrong-bearer-5d2e"
BAD_SECRET = "not-the-secret-8c1a"
ROUTER_ONLY = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "voicefleet-router"}}}]
DEGRADED_WITHIN = 30.0
SPEECH = {"model": "joe", "input": "My own voice.", "voice": "default", "response_format": "wav"}


@dataclass(frozen=True)
class Broken:
    """A voice that must end in Degraded: its model, the reason and the words to read."""

    name: str
    model: dict[str, Any]
    reason: str
    fragments: tuple[str, ...]


@dataclass
class Setup:
    cluster: LocalCluster
    ns: str
    files: FileServer
    cache: Path
    applied_at: float
    broken: dict[str, Broken]
    alt_config: str
    """The path of a second config (a new pin) for the model change."""


def https_model(files: FileServer, path: str = "/private/voices/joe.onnx") -> dict[str, Any]:
    public = path.removeprefix("/private")
    return {
        "url": f"{files.base}{path}",
        "sha256": sha(files.files[public]),
        "configSha256": sha(files.files[f"{public}.json"]),
        "credentialsSecret": "model-token",
        "caConfigMap": "model-ca",
    }


def url_voice(name: str, model: dict[str, Any]) -> dict[str, Any]:
    return voice_manifest(
        name,
        model=model,
        replicas=1,
        resources={"cpu": "100m", "memory": "512Mi"},
        autoscaling={"enabled": False},
        server={"drainGraceSeconds": 5},
    )


def ready(cluster: LocalCluster, ns: str, name: str) -> bool:
    cond = condition(voice(cluster, ns, name), "Ready")
    return bool(cond and cond["status"] == "True")


def selector(name: str) -> str:
    return f"voicefleet.io/voice={name}"


def service_url(cluster: LocalCluster, ns: str, name: str) -> str:
    ip = cluster.get_json("service", name, "-n", ns)["spec"]["clusterIP"]
    return f"http://{ip}/v1/audio/speech"


def speak(url: str) -> bytes:
    response = httpx.post(url, json=SPEECH, timeout=60)
    assert response.status_code == 200, response.text[:300]
    return response.content


@pytest.fixture(scope="module")
def setup(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    cluster = local_cluster
    cluster.install_crds()
    work = tmp_path_factory.mktemp("byo")
    pki = make_ca_and_server_cert(work, node.NODE_IP)
    _, onnx, config = resolve_piper_model(BUNDLED_VOICE)
    onnx_bytes, config_bytes = onnx.read_bytes(), config.read_bytes()
    # A second pin of the same weights: the config with a slower speaking rate.
    slower = json.loads(config_bytes)
    slower["inference"]["length_scale"] = 1.25
    alt_config = "/voices/joe-slower.onnx.json"
    files = {
        "/voices/joe.onnx": onnx_bytes,
        "/voices/joe.onnx.json": config_bytes,
        alt_config: json.dumps(slower).encode(),
    }
    cache = work / "model-cache"
    cache.mkdir()
    os.chown(cache, POD_UID, POD_UID)
    s3_objects = {"en/joe.onnx": onnx_bytes, "en/joe.onnx.json": config_bytes}
    with (
        cluster.namespace("byo") as ns,
        https_file_server(files, pki, host=node.NODE_IP) as server,
        seaweedfs(work, BUCKET, s3_objects, host=node.NODE_IP) as s3_endpoint,
    ):
        cluster.kubectl_run(
            "create", "configmap", "model-ca", "-n", ns, f"--from-file=ca.crt={server.ca}"
        )
        for secret, pairs in {
            "model-token": {"token": TOKEN},
            "bad-token": {"token": BAD_TOKEN},
            "s3-creds": {"accessKeyId": S3_KEY, "secretAccessKey": S3_SECRET},
            "s3-unknown": {"accessKeyId": "AKIDNOBODY", "secretAccessKey": BAD_SECRET},
            "s3-wrong-secret": {"accessKeyId": S3_KEY, "secretAccessKey": BAD_SECRET},
        }.items():
            literals = [f"--from-literal={k}={v}" for k, v in pairs.items()]
            cluster.kubectl_run("create", "secret", "generic", secret, "-n", ns, *literals)
        s3_model = {
            "url": f"s3://{BUCKET}/en/joe.onnx",
            "sha256": sha(onnx_bytes),
            "configSha256": sha(config_bytes),
            "credentialsSecret": "s3-creds",
            "s3": {"endpoint": s3_endpoint},
        }
        base = server.base
        broken = {
            case.name: case
            for case in (
                Broken(
                    "bad-digest",
                    https_model(server) | {"sha256": sha(b"some other model")},
                    "ModelDigestMismatch",
                    (
                        f"{base}/private/voices/joe.onnx: sha256 {sha(onnx_bytes)} of "
                        f"{len(onnx_bytes)} bytes is not the expected {sha(b'some other model')}",
                        "the file was deleted",
                    ),
                ),
                Broken(
                    "missing",
                    https_model(server) | {"url": f"{base}/private/voices/gone.onnx"},
                    "ModelFetchFailed",
                    (f"{base}/private/voices/gone.onnx: not found (HTTP 404 Not Found)",),
                ),
                Broken(
                    "bad-token",
                    https_model(server) | {"credentialsSecret": "bad-token"},
                    "ModelFetchFailed",
                    (
                        f"{base}/private/voices/joe.onnx: the credential was refused "
                        "(HTTP 401 Unauthorized); check spec.model.credentialsSecret",
                    ),
                ),
                Broken(
                    "s3-unknown-key",
                    s3_model | {"credentialsSecret": "s3-unknown"},
                    "ModelFetchFailed",
                    (
                        f"s3://{BUCKET}/en/joe.onnx: the credential was refused "
                        "(HTTP 403 Forbidden, InvalidAccessKeyId)",
                    ),
                ),
                Broken(
                    "s3-wrong-secret",
                    s3_model | {"credentialsSecret": "s3-wrong-secret"},
                    "ModelFetchFailed",
                    (
                        f"s3://{BUCKET}/en/joe.onnx: the credential was refused "
                        "(HTTP 403 Forbidden, SignatureDoesNotMatch)",
                    ),
                ),
            )
        }
        operator = new_operator(
            cluster.kubeconfig,
            work / "operator.log",
            namespaces=[ns],
            extra=[
                "--autoscale-interval=0",
                f"--model-cache-dir={cache}",
                f"--network-policy-from={json.dumps(ROUTER_ONLY)}",
            ],
        )
        operator.start(timeout=90)
        try:
            manifests = [
                url_voice("https-voice", https_model(server)),
                url_voice("s3-voice", s3_model),
                *(url_voice(case.name, case.model) for case in broken.values()),
            ]
            applied_at = time.time()
            cluster.apply(manifests, namespace=ns)
            yield Setup(cluster, ns, server, cache, applied_at, broken, alt_config)
        finally:
            operator.stop()
            print(f"\n--- file server log: {server.requests()}")


def wait_ready(setup: Setup, name: str) -> None:
    wait_for(
        lambda: ready(setup.cluster, setup.ns, name),
        timeout=180,
        interval=0.5,
        what=f"{name} Ready",
    )


def test_a_voice_from_https_with_a_private_ca_and_a_token_is_ready_and_speaks(
    setup: Setup,
) -> None:
    cluster, ns = setup.cluster, setup.ns
    wait_ready(setup, "https-voice")
    audio = wait_for(
        lambda: speak(service_url(cluster, ns, "https-voice")), timeout=60, what="speech"
    )
    assert audio[:4] == b"RIFF"
    assert len(audio) > 10_000
    # The pod fetched under the voice's NetworkPolicy (ingress from routers only; egress open).
    policy = cluster.get_json("networkpolicy", "https-voice", "-n", ns)["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"] == {"matchLabels": {"voicefleet.io/voice": "https-voice"}}
    # From a pod on the bridge, with the token (a request without it would be a 401 here).
    pod_ip = cluster.ready_pods(ns, selector("https-voice"))[0]["status"]["podIP"]
    assert ("/private/voices/joe.onnx", 200, pod_ip) in setup.files.log
    assert not [entry for entry in setup.files.log if entry[1] == 401 and entry[2] == pod_ip]
    # Into the cache, keyed by both digests and (a credential was used) by its scope.
    model = https_model(setup.files)
    scopes = setup.cache.glob(f"{model['sha256']}-{model['configSha256'][:16]}-*")
    # A download in flight is a hidden `.<name>.<random>.part` file until its digest
    # checks out (the refused credentials' voices retry: each try opens one before its
    # request is refused); only what is renamed into place counts as held.
    held = {
        key.name: sorted(path.name for path in key.iterdir() if not path.name.endswith(".part"))
        for key in scopes
    }
    both = ["joe.onnx", "joe.onnx.json"]
    assert all(files in ([], both) for files in held.values()), held
    # This voice's scope and perhaps the S3 voice's (its own Secret) are filled; the
    # refused credentials' scopes (same digests, other Secrets) hold nothing.
    filled = [setup.cache / name for name, files in held.items() if files]
    assert 1 <= len(filled) <= 2, held
    assert len(held) - len(filled) >= 1, held
    for key in filled:
        assert sha((key / "joe.onnx").read_bytes()) == model["sha256"]


def test_a_voice_from_s3_is_ready_and_speaks(setup: Setup) -> None:
    wait_ready(setup, "s3-voice")
    url = service_url(setup.cluster, setup.ns, "s3-voice")
    audio = wait_for(lambda: speak(url), timeout=60, what="speech")
    assert audio[:4] == b"RIFF"
    assert len(audio) > 10_000


@pytest.mark.parametrize(
    "name", ["bad-digest", "missing", "bad-token", "s3-unknown-key", "s3-wrong-secret"]
)
def test_a_failed_fetch_is_degraded_with_its_cause_within_30_s(setup: Setup, name: str) -> None:
    case = setup.broken[name]
    cluster, ns = setup.cluster, setup.ns
    try:
        cond = wait_for(
            lambda: degraded_with(cluster, ns, name, case.reason),
            timeout=max(5.0, setup.applied_at + DEGRADED_WITHIN + 5 - time.time()),
            interval=0.5,
            what=f"{name}: Degraded {case.reason}",
        )
    except AssertionError as exc:
        conditions = voice(cluster, ns, name).get("status", {}).get("conditions")
        pods = [p["status"] for p in cluster.pods(ns, selector(name))]
        raise AssertionError(f"{exc}\nconditions: {conditions}\npods: {pods}") from exc
    changed = datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00"))
    seconds = changed.timestamp() - setup.applied_at
    print(f"\n{name}: Degraded {case.reason} {seconds:.0f} s after the apply: {cond['message']}")
    # The transition time has second precision: up to a second before the apply's instant.
    assert -1.5 <= seconds <= DEGRADED_WITHIN, seconds
    assert cond["message"].startswith("container 'fetch-model' exited with code 1")
    for fragment in case.fragments:
        assert fragment in cond["message"], cond["message"]
    for secret in (TOKEN, BAD_TOKEN, S3_SECRET, BAD_SECRET):
        assert secret not in cond["message"]
    assert not ready(cluster, ns, name)
    # Nothing serves: the server container never started, the Service has no endpoint.
    for pod in cluster.pods(ns, selector(name)):
        for status in pod["status"].get("containerStatuses") or []:
            assert "waiting" in status["state"], status
            assert not status.get("ready")
    slices = cluster.get_json(
        "endpointslices", "-n", ns, "-l", f"kubernetes.io/service-name={name}"
    )
    serving = [
        e
        for s in slices["items"]
        for e in s.get("endpoints") or []
        if (e.get("conditions") or {}).get("ready")
    ]
    assert not serving, serving


def test_a_model_that_failed_its_digest_leaves_nothing_in_the_cache(setup: Setup) -> None:
    case = setup.broken["bad-digest"]
    wait_for(
        lambda: degraded_with(setup.cluster, setup.ns, case.name, case.reason),
        timeout=60,
        what="bad-digest Degraded",
    )
    keys = setup.cache.glob(f"{case.model['sha256']}-*")
    left = [str(path) for key in keys for path in key.iterdir()]
    assert left == []


def test_a_model_change_under_load_fails_no_request(setup: Setup) -> None:
    """A new config pin (a new digest, so a new download) while three clients keep calling
    the Service, each request on its own connection: the new pod fetches, loads and passes
    readiness before the old one drains."""
    cluster, ns, name = setup.cluster, setup.ns, "https-voice"
    wait_ready(setup, name)
    url = service_url(cluster, ns, name)
    wait_for(lambda: speak(url), timeout=60, what="speech")
    replicas = len(cluster.ready_pods(ns, selector(name)))
    current = voice(cluster, ns, name)["spec"]["model"]
    new_config = f"/private{setup.alt_config}"
    config_url = f"{setup.files.base}{new_config}"
    patch = {
        "configUrl": None if current.get("configUrl") == config_url else config_url,
        "configSha256": sha(
            setup.files.files[
                "/voices/joe.onnx.json" if current.get("configUrl") == config_url
                else setup.alt_config
            ]
        ),
    }  # fmt: skip
    gets_before = setup.files.gets(new_config)

    with steady_load(url, SPEECH, timeout=60) as outcomes:
        time.sleep(2)
        old = {p["metadata"]["name"] for p in cluster.pods(ns, selector(name))}
        before = len(outcomes)
        cluster.kubectl_run(
            "patch", "ttsvoice", name, "-n", ns, "--type=merge",
            "-p", json.dumps({"spec": {"model": patch}}),
        )  # fmt: skip
        wait_for(
            lambda: rolled_out(cluster, ns, selector(name), old, replicas),
            timeout=180,
            interval=0.5,
            what="the rollout to replace the pods",
        )
        time.sleep(2)
    failed = [o for o in outcomes if o != "200"]
    print(f"\nmodel change: {len(outcomes)} requests ({before} before the patch), failed {failed}")
    assert before >= 3, outcomes
    assert len(outcomes) - before >= 10, outcomes
    assert not failed, f"{len(failed)} of {len(outcomes)} failed: {failed[:5]}"
    if patch["configUrl"] is not None:
        assert setup.files.gets(new_config) == gets_before + 1  # one real download
    assert ready(cluster, ns, name)


def added_ip(pod: dict[str, Any]) -> str:
    ip: str = pod["status"]["podIP"]
    return ip


def test_a_second_replica_on_the_node_downloads_nothing(setup: Setup) -> None:
    cluster, ns, name = setup.cluster, setup.ns, "https-voice"
    wait_ready(setup, name)
    replicas = len(cluster.ready_pods(ns, selector(name)))
    first = {p["metadata"]["name"] for p in cluster.pods(ns, selector(name))}
    log_before = list(setup.files.log)
    cluster.kubectl_run(
        "patch", "ttsvoice", name, "-n", ns, "--type=merge",
        "-p", json.dumps({"spec": {"replicas": replicas + 1}}),
    )  # fmt: skip
    wait_for(
        lambda: len(cluster.ready_pods(ns, selector(name))) == replicas + 1,
        timeout=180,
        interval=0.5,
        what=f"{replicas + 1} ready pods",
    )
    (added,) = [p for p in cluster.pods(ns, selector(name)) if p["metadata"]["name"] not in first]
    # The broken voices' pods keep retrying; the new replica asked for nothing.
    asked = [entry for entry in setup.files.log[len(log_before) :] if entry[2] == added_ip(added)]
    assert asked == [], asked
    pod_name = added["metadata"]["name"]
    fetched = cluster.kubectl_run("logs", pod_name, "-n", ns, "-c", "fetch-model").stdout
    assert fetched.count("with the expected sha256, not downloaded") == 2, fetched
    speak(service_url(cluster, ns, name))
