"""Pure parts of the local cluster: env expansion, IPs, probes, pod status, pins, PKI text."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from voicefleet_localcluster import binaries, pki
from voicefleet_localcluster.ipam import AddressesExhausted, IpAllocator, PodNetworkClaim
from voicefleet_localcluster.kubeconfig import KubeConfig, load
from voicefleet_localcluster.kubelet import restart_backoff, should_restart
from voicefleet_localcluster.logserver import tail_lines
from voicefleet_localcluster.podspec import (
    UnsupportedSpec,
    container_argv,
    expand,
    field_value,
    image_command,
    image_pull_error,
    memory_bytes,
    resolve_env,
    resolve_port,
    termination_message,
)
from voicefleet_localcluster.podstatus import (
    ContainerView,
    Termination,
    build_pod_status,
    pod_phase,
)
from voicefleet_localcluster.probes import Probe, ProbeTracker, parse_probe
from voicefleet_localcluster.testing import WaitTimeout, wait_for

POD: dict[str, Any] = {
    "metadata": {
        "name": "voice-0",
        "namespace": "tts",
        "uid": "u-1",
        "labels": {"app": "voice"},
        "annotations": {"a/b": "c"},
    },
    "spec": {"nodeName": "node-a", "serviceAccountName": "runner"},
}


# -- $(VAR) expansion ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "1"),
        ("x$(A)y$(B)z", "x1y2z"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$", "$"),
        ("$A", "$A"),
        ("$(A", "$(A"),
        ("$()", "$()"),
        ("$$$(A)", "$1"),
    ],
)
def test_expand_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}) == expected


def test_env_values_see_only_earlier_variables_and_the_downward_api() -> None:
    container = {
        "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "URL", "value": "http://$(IP):$(PORT)"},
            {"name": "PORT", "value": "8080"},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "HOMEDIR", "value": "$(HOME)/x"},
        ]
    }
    env = resolve_env(
        container, POD, base_env={"HOME": "/h"}, pod_ip="127.0.3.4", host_ip="127.0.0.1"
    )
    assert env["URL"] == "http://127.0.3.4:$(PORT)"  # PORT is defined later: left verbatim
    assert env["NS"] == "tts"
    assert env["APP"] == "voice"
    assert env["HOMEDIR"] == "/h/x"


def test_config_map_and_secret_references() -> None:
    maps = {("tts", "settings"): {"voice": "joe", "rate": "1.0"}}
    secrets = {("tts", "creds"): {"token": "s3cret"}}
    container = {
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {
                "name": "OPT",
                "valueFrom": {
                    "configMapKeyRef": {"name": "settings", "key": "nope", "optional": True}
                },
            },
        ],
    }
    env = resolve_env(
        container,
        POD,
        base_env={},
        pod_ip="127.0.3.4",
        host_ip="127.0.0.1",
        config_map=lambda ns, name: maps.get((ns, name)),
        secret=lambda ns, name: secrets.get((ns, name)),
    )
    assert env == {"CFG_voice": "joe", "CFG_rate": "1.0", "TOKEN": "s3cret"}
    missing = {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k"}}}]}
    with pytest.raises(UnsupportedSpec, match="not found"):
        resolve_env(missing, POD, base_env={}, pod_ip="", host_ip="", config_map=lambda ns, n: None)


def test_field_values_and_unsupported_paths() -> None:
    assert field_value(POD, "spec.nodeName", pod_ip="i", host_ip="h") == "node-a"
    assert field_value(POD, "status.hostIP", pod_ip="i", host_ip="h") == "h"
    assert field_value(POD, "metadata.annotations['a/b']", pod_ip="i", host_ip="h") == "c"
    with pytest.raises(UnsupportedSpec):
        field_value(POD, "spec.containers[0].image", pod_ip="i", host_ip="h")


@pytest.mark.parametrize(
    ("image", "command"),
    [
        ("voicefleet-server", "voicefleet-server"),
        ("ghcr.io/acme/voicefleet-server:0.1.0", "voicefleet-server"),
        ("localhost:5000/voicefleet-router@sha256:abc", "voicefleet-router"),
        ("python:3.11", "python"),
    ],
)
def test_image_maps_to_its_last_path_segment(image: str, command: str) -> None:
    assert image_command(image) == command


def test_argv_uses_command_or_image_and_expands() -> None:
    env = {"POD_IP": "127.0.1.2"}
    assert container_argv(
        {"command": ["python", "-m", "http.server"], "args": ["--bind", "$(POD_IP)"]}, env
    ) == ["python", "-m", "http.server", "--bind", "127.0.1.2"]
    assert container_argv({"image": "acme/voicefleet-server:1", "args": ["--port=80"]}, env) == [
        "voicefleet-server",
        "--port=80",
    ]


def test_ports_by_number_string_and_name() -> None:
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
    assert resolve_port(9, container) == 9
    assert resolve_port("9090", container) == 9090
    assert resolve_port("http", container) == 8080
    with pytest.raises(UnsupportedSpec, match="no port named"):
        resolve_port("metrics", container)


# -- pod IPs ---------------------------------------------------------------------------


def test_ip_allocation_is_unique_round_robin_and_sticky() -> None:
    alloc = IpAllocator(7)
    a = alloc.allocate("pod-a")
    b = alloc.allocate("pod-b")
    assert (a, b) == ("127.0.7.2", "127.0.7.3")
    assert alloc.allocate("pod-a") == a  # same owner, same address
    alloc.release("pod-a")
    assert alloc.allocate("pod-c") == "127.0.7.4"  # freed addresses are reused last
    assert alloc.reserve("127.0.7.3", "pod-d") is False  # taken
    assert alloc.reserve("127.0.8.9", "pod-d") is False  # another node's network
    assert alloc.reserve("127.0.7.200", "pod-d") is True


def test_ip_allocation_exhausts_and_wraps() -> None:
    alloc = IpAllocator(1)
    ips = {alloc.allocate(f"p{i}") for i in range(253)}
    assert len(ips) == 253
    assert "127.0.1.1" not in ips
    assert "127.0.1.255" not in ips
    with pytest.raises(AddressesExhausted):
        alloc.allocate("one-too-many")
    alloc.release("p10")
    assert alloc.allocate("again") == "127.0.1.12"


def test_two_kubelets_claim_different_pod_networks(tmp_path: Path) -> None:
    first = PodNetworkClaim.acquire(tmp_path)
    second = PodNetworkClaim.acquire(tmp_path)
    try:
        assert first.third_octet != second.third_octet
    finally:
        first.release()
        second.release()
    again = PodNetworkClaim.acquire(tmp_path)
    again.release()
    assert again.third_octet == first.third_octet  # released claims are reusable


# -- probes ----------------------------------------------------------------------------


def test_probe_parsing_fills_defaults_and_named_ports() -> None:
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}
    probe = parse_probe({"httpGet": {"path": "/readyz", "port": "http"}}, container, "127.0.1.2")
    assert probe == Probe(action="http", host="127.0.1.2", port=8080, path="/readyz")
    assert parse_probe(None, container, "127.0.1.2") is None
    tcp = parse_probe({"tcpSocket": {"port": 81}, "periodSeconds": 2}, container, "h")
    assert tcp is not None
    assert (tcp.action, tcp.port, tcp.period) == ("tcp", 81, 2.0)


def test_readiness_needs_success_threshold_and_failure_threshold_to_flip() -> None:
    probe = Probe(
        action="http",
        host="h",
        port=1,
        initial_delay=5,
        period=1,
        success_threshold=2,
        failure_threshold=3,
    )
    tracker = ProbeTracker(probe, "readiness", started_at=100.0)
    assert not tracker.verdict
    assert not tracker.due(104.9)
    assert tracker.due(105.0)
    assert not tracker.record(True, 105.0)
    assert not tracker.due(105.5)
    assert tracker.record(True, 106.0)
    assert tracker.record(False, 107.0)  # one failure is not enough
    assert tracker.record(False, 108.0)
    assert not tracker.record(False, 109.0)
    assert tracker.failed


def test_liveness_starts_alive() -> None:
    probe = Probe(action="tcp", host="h", port=1, failure_threshold=2)
    tracker = ProbeTracker(probe, "liveness", started_at=0.0)
    assert tracker.verdict
    tracker.record(False, 1.0)
    assert not tracker.failed
    tracker.record(False, 2.0)
    assert tracker.failed


# -- status ----------------------------------------------------------------------------

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def running(ready: bool = True, restarts: int = 0) -> ContainerView:
    return ContainerView(
        name="c",
        image="i",
        state="running",
        ready=ready,
        started=True,
        restart_count=restarts,
        pid=42,
        started_at=NOW,
    )


def terminated(code: int) -> ContainerView:
    return ContainerView(
        name="c",
        image="i",
        state="terminated",
        termination=Termination(exit_code=code, reason="x", started_at=NOW, finished_at=NOW),
    )


def test_pod_phase() -> None:
    assert pod_phase([ContainerView(name="c", image="i", state="waiting")], "Always") == "Pending"
    assert pod_phase([running()], "Always") == "Running"
    assert pod_phase([terminated(0)], "Never") == "Succeeded"
    assert pod_phase([terminated(1)], "Never") == "Failed"
    assert pod_phase([terminated(1)], "OnFailure") == "Running"
    assert pod_phase([terminated(0)], "OnFailure") == "Succeeded"
    assert pod_phase([terminated(0)], "Always") == "Running"
    back_off = ContainerView(
        name="c",
        image="i",
        state="waiting",
        restart_count=1,
        last_termination=terminated(1).termination,
    )
    assert pod_phase([back_off], "Always") == "Running"


def test_status_keeps_transition_times_until_a_condition_flips() -> None:
    def status(
        containers: list[ContainerView], previous: list[dict[str, Any]], now: datetime
    ) -> Any:
        return build_pod_status(
            containers=containers,
            restart_policy="Always",
            pod_ip="127.0.1.2",
            host_ip="127.0.0.1",
            start_time=NOW,
            previous_conditions=previous,
            now=now,
        )

    first = status([running(ready=False)], [], NOW)
    ready = {c["type"]: c for c in first["conditions"]}["Ready"]
    assert ready["status"] == "False"
    assert ready["reason"] == "ContainersNotReady"
    later = NOW + timedelta(seconds=30)
    same = status([running(ready=False)], first["conditions"], later)
    assert same == first  # nothing changed: identical, so the kubelet writes nothing
    flipped = status([running(ready=True)], first["conditions"], later)
    conditions = {c["type"]: c for c in flipped["conditions"]}
    assert conditions["Ready"] == {
        "type": "Ready",
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": "2026-01-02T03:04:35Z",
    }
    assert conditions["PodScheduled"]["lastTransitionTime"] == "2026-01-02T03:04:05Z"
    assert flipped["podIP"] == "127.0.1.2"
    assert flipped["podIPs"] == [{"ip": "127.0.1.2"}]
    container = flipped["containerStatuses"][0]
    assert container["containerID"] == "process://42"
    assert container["state"] == {"running": {"startedAt": "2026-01-02T03:04:05Z"}}


def test_restart_rules() -> None:
    assert should_restart("Always", 0)
    assert should_restart("OnFailure", 3)
    assert not should_restart("OnFailure", 0)
    assert not should_restart("Never", 1)
    assert [restart_backoff(n, 30) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


# -- build pins, PKI text, kubeconfig, waiting --------------------------------------


def test_module_versions_are_read_from_go_mod() -> None:
    text = (
        "module x\n\nrequire k8s.io/kubernetes v1.34.4\n\n"
        "require (\n\tgo.etcd.io/etcd/server/v3 v3.6.4 // indirect\n)\n"
    )
    assert binaries.module_version(text, "k8s.io/kubernetes") == "v1.34.4"
    assert binaries.module_version(text, "go.etcd.io/etcd/server/v3") == "v3.6.4"
    with pytest.raises(LookupError):
        binaries.module_version(text, "helm.sh/helm/v3")


def test_repository_pins_and_cache_key() -> None:
    versions = binaries.read_versions()
    assert versions.kubernetes.startswith("v1.3")
    assert versions.etcd.startswith("v3.")
    assert versions.helm.startswith("v3.")
    assert versions.cache_key.startswith(f"k8s-{versions.kubernetes}-helm-{versions.helm}-")
    kube = next(t for t in binaries.TARGETS if t.name == "kube-apiserver")
    assert f"version.gitVersion={versions.kubernetes}" in binaries.ldflags(kube, versions)


def test_certificate_subjects_and_extensions() -> None:
    assert pki.subject("system:node:n", ["system:nodes"]) == "/O=system:nodes/CN=system:node:n"
    with pytest.raises(ValueError, match="unsupported"):
        pki.subject("a/b")
    ext = pki.leaf_extensions(server=True, client=False, dns_names=["localhost"], ips=["127.0.0.1"])
    assert "extendedKeyUsage = serverAuth\n" in ext
    assert "subjectAltName = DNS:localhost,IP:127.0.0.1" in ext


def test_kubeconfig_round_trip(tmp_path: Path) -> None:
    config = KubeConfig(server="https://127.0.0.1:1", ca_pem=b"ca", cert_pem=b"c", key_pem=b"k")
    path = config.write(tmp_path / "kc")
    assert path.stat().st_mode & 0o777 == 0o600
    assert load(path) == config


def test_wait_for_returns_the_value_or_times_out() -> None:
    calls = iter([None, 0, "done"])
    assert wait_for(lambda: next(calls), timeout=5, interval=0.001) == "done"
    with pytest.raises(WaitTimeout, match=r"never.*ZeroDivisionError"):
        wait_for(lambda: 1 / 0 == 0, timeout=0.05, interval=0.01, what="never")


def test_go_version_parsing() -> None:
    assert binaries.go_version("go version go1.26.8 linux/amd64") == (1, 26)
    assert binaries.go_version("go version go1.9 linux/amd64") == (1, 9)
    assert binaries.go_version("bash: go: not found") is None


def test_zip_h1_matches_go_sum_hashing(tmp_path: Path) -> None:
    """dirhash.Hash1 over the zip's entries (checked once against a real go.sum line)."""
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("m@v1/go.mod", "module m\n")
        zipped.writestr("m@v1/a.go", "package m\n")
    assert binaries.zip_h1(archive) == "h1:H1N7vbG0aKow6Pg3vW8mqcv6r6Qo9oWn9TF7mlIYrpc="


def test_log_tail_drops_kubelet_markers() -> None:
    data = b"--- voicefleet kubelet t: c run 1\na\nb\n--- voicefleet kubelet t: c run 2\nc\n"
    assert tail_lines(data, None) == b"a\nb\nc\n"
    assert tail_lines(data, 2) == b"b\nc\n"
    assert tail_lines(data, 0) == b""


# --- images, termination messages, memory limits -----------------------------------------


def test_image_present_when_its_command_is_on_path(tmp_path: Path) -> None:
    tool = tmp_path / "voicefleet-server"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    path = str(tmp_path)
    assert image_pull_error("ghcr.io/voicefleet/voicefleet-server:0.1.0", "Always", path) is None
    assert image_pull_error("busybox", "IfNotPresent", path) is None, "preloaded base image"
    assert image_pull_error("ghcr.io/voicefleet/voicefleet-control:1", "Always", path) is None
    reason, message = image_pull_error("ghcr.io/nobody/no-such-server:1", "IfNotPresent", path) or (
        "",
        "",
    )
    assert reason == "ErrImagePull"
    assert 'failed to pull image "ghcr.io/nobody/no-such-server:1"' in message
    assert 'no executable "no-such-server"' in message
    never = image_pull_error("acme/nothing:1", "Never", path)
    assert never is not None
    assert never[0] == "ErrImageNeverPull"
    invalid = image_pull_error("acme/:1", "IfNotPresent", path)
    assert invalid is not None
    assert invalid[0] == "InvalidImageName"


def test_termination_message_file_wins_then_log_tail_on_error() -> None:
    log = b"".join(f"line {i}\n".encode() for i in range(200))
    fallback = "FallbackToLogsOnError"
    assert termination_message(b"ModelLoadFailed: x\n", log, fallback, 1) == "ModelLoadFailed: x\n"
    tail = termination_message(b"", log, fallback, 1)
    assert tail.endswith("line 199\n")
    assert tail.startswith("line 120\n"), "the last 80 lines"
    assert len(termination_message(b"", b"x" * 5000, fallback, 1)) == 2048
    assert termination_message(b"", log, fallback, 0) == "", "no fallback on success"
    assert termination_message(b"", log, "File", 1) == "", "no fallback under File"
    assert len(termination_message(b"y" * 9000, b"", "File", 1)) == 4096


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("1.5Gi", int(1.5 * 2**30)),
        (1048576, 1048576),
        ("128974848", 128974848),
        (None, None),
        ("lots", None),
    ],
)
def test_memory_quantities(quantity: object, expected: int | None) -> None:
    assert memory_bytes(quantity) == expected
