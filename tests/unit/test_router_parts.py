"""Router edges that need no server: settings, API-object conversion, scrape parsing, cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voicefleet_inference.cost import REFERENCE_COST
from voicefleet_inference.router.app import estimate_cost, playground_html
from voicefleet_inference.router.discovery import parse_static, pod_from_object, voice_from_object
from voicefleet_inference.router.fleet import VoiceKey
from voicefleet_inference.router.settings import (
    Policy,
    RouterSettings,
    SettingsError,
    load_settings,
)

# -- settings -----------------------------------------------------------------------------


def test_defaults_are_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("VOICEFLEET_ROUTER_"):
            monkeypatch.delenv(name)
    s = load_settings([])
    assert (s.port, s.policy, s.namespaces) == (8080, Policy.JSQ_WORK, ("default",))
    assert s.poll_after_s < s.stale_after_s
    assert s.token() is None


def test_flags_win_over_env_and_lists_split_on_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEFLEET_ROUTER_PORT", "9000")
    monkeypatch.setenv("VOICEFLEET_ROUTER_WATCH_NAMESPACES", "a, b")
    monkeypatch.setenv("VOICEFLEET_ROUTER_POLICY", "round-robin")
    s = load_settings(["--port", "9100"])
    assert (s.port, s.namespaces, s.policy) == (9100, ("a", "b"), Policy.ROUND_ROBIN)
    s = load_settings(["--watch-namespaces", "x", "--watch-namespaces", "y,z"])
    assert s.namespaces == ("x", "y", "z")
    assert load_settings(["--watch-namespaces", "*"]).namespaces is None


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["--poll-interval-s", "0.001"],
            "--poll-interval-s / VOICEFLEET_ROUTER_POLL_INTERVAL_S",
        ),
        (["--policy", "fastest"], "--policy / VOICEFLEET_ROUTER_POLICY"),
        (["--port", "0"], "--port / VOICEFLEET_ROUTER_PORT"),
        (["--log-level", "loud"], "--log-level / VOICEFLEET_ROUTER_LOG_LEVEL"),
    ],
)
def test_bad_values_name_the_flag_and_the_variable(argv: list[str], named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace("/", ".")):
        load_settings(argv)


def test_the_token_comes_from_a_mounted_file_or_the_env(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert RouterSettings(auth_token_file=secret).token() == "s3cret"
    assert RouterSettings(auth_token="abc").token() == "abc"  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="AUTH_TOKEN_FILE"):
        RouterSettings(auth_token_file=tmp_path / "missing").token()
    with pytest.raises(ValueError, match="not both"):
        RouterSettings(auth_token="a", auth_token_file=secret)  # type: ignore[arg-type]


# -- Kubernetes objects -------------------------------------------------------------------


def voice_obj(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "joe", "namespace": "ns", "creationTimestamp": "2026-11-27T10:00:00Z"},
        "spec": spec,
    }


def test_a_voice_gives_its_model_name_and_cold_start_timeout() -> None:
    v = voice_from_object(
        voice_obj(
            model={"bundled": "en_US-joe-medium"}, autoscaling={"coldStartTimeoutSeconds": 45}
        )
    )
    assert (v.key, v.model_name, v.cold_start_timeout_s) == (
        VoiceKey("ns", "joe"),
        "en_US-joe-medium",
        45.0,
    )
    assert v.created == 1795773600
    from_volume = voice_from_object(
        voice_obj(model={"volume": {"path": "voices/de_DE-thorsten-medium.onnx"}})
    )
    assert from_volume.model_name == "de_DE-thorsten-medium"
    assert from_volume.cold_start_timeout_s == 120.0  # the CRD default


def pod_obj(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "joe-1", "namespace": "ns", "labels": {"voicefleet.io/voice": "joe"}},
        "status": {
            "phase": "Running",
            "podIP": "127.0.3.4",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        obj[section][field] = value
    return obj


def test_a_pod_gives_ip_readiness_and_deletion() -> None:
    pod = pod_from_object(pod_obj())
    assert pod is not None
    assert (pod.key, pod.voice, pod.base_url, pod.ready, pod.deleting) == (
        "ns/joe-1",
        VoiceKey("ns", "joe"),
        "http://127.0.3.4:8080",
        True,
        False,
    )
    assert pod_from_object(pod_obj(metadata__deletionTimestamp="2026-11-27T10:00:00Z")).deleting  # type: ignore[union-attr]
    not_ready = pod_from_object(pod_obj(status__conditions=[{"type": "Ready", "status": "False"}]))
    assert not_ready is not None
    assert not not_ready.ready
    no_ip = pod_from_object(pod_obj(status__podIP=None))
    assert no_ip is not None
    assert no_ip.base_url is None
    assert pod_from_object(pod_obj(metadata__labels={})) is None
    v6 = pod_from_object(pod_obj(status__podIP="fd00::5"))
    assert v6 is not None
    assert v6.base_url == "http://[fd00::5]:8080"


def test_static_upstreams_parse_and_refuse_nonsense() -> None:
    entries = parse_static(
        ["joe=http://127.0.0.1:9001#en_US-joe-medium", "team/joe=http://127.0.0.1:9002"],
        namespace="default",
        cold_start_timeout_s=5.0,
    )
    assert [(e.voice.key, e.voice.model_name, e.pod.base_url) for e in entries] == [
        (VoiceKey("default", "joe"), "en_US-joe-medium", "http://127.0.0.1:9001"),
        (VoiceKey("team", "joe"), "joe", "http://127.0.0.1:9002"),
    ]
    with pytest.raises(ValueError, match="expected"):
        parse_static(["joe:127.0.0.1:9001"], namespace="d", cold_start_timeout_s=1.0)


# -- scrape and cost ----------------------------------------------------------------------

LABELLED_POD_METRICS = """# TYPE voicefleet_queue_depth gauge
voicefleet_queue_depth{voice="en_US-joe-medium"} 3.0
voicefleet_requests_in_flight{voice="en_US-joe-medium"} 1.0
voicefleet_request_duration_seconds_bucket{le="0.05"} 0.0
voicefleet_queue_work_seconds{voice="en_US-joe-medium"} 2.75
"""


def _http_answer(status: bytes, body: bytes, headers: bytes = b"") -> bytes:
    """One HTTP/1.1 response as the fake pods below send it (``headers``: whole lines)."""
    return b"HTTP/1.1 %s\r\n%scontent-length: %d\r\n\r\n%s" % (status, headers, len(body), body)


async def test_a_pod_without_load_endpoint_is_read_from_its_labelled_metrics_page() -> None:
    """An older server (no ``/load``) is read from ``/metrics`` by the contract reader: a
    labelled page is a busy pod, not a failed read (the operator reads it so too)."""
    import asyncio

    from voicefleet_inference.router.fleet import Fleet, PodInfo, VoiceInfo
    from voicefleet_inference.router.metrics import create_metrics
    from voicefleet_inference.router.poll import LoadPoller

    asked: list[str] = []

    async def fake_old_pod(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A fake pod at our own seam: a loopback socket answering like an older server."""
        while not reader.at_eof():
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            path = head.split(b" ", 2)[1].decode()
            asked.append(path)
            body = LABELLED_POD_METRICS.encode() if path == "/metrics" else b"not found"
            status = b"200 OK" if path == "/metrics" else b"404 Not Found"
            writer.write(_http_answer(status, body))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(fake_old_pod, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fleet = Fleet("ns", clock=lambda: 10.0)
    voice = VoiceKey("ns", "joe")
    fleet.upsert_voice(VoiceInfo(voice, "m", 1.0))
    fleet.upsert_pod(PodInfo("ns", "joe-1", voice, f"http://127.0.0.1:{port}", ready=True))
    metrics = create_metrics()
    poller = LoadPoller(fleet, metrics, interval_s=0.1, after_s=0.5, timeout_s=2.0)
    try:
        await poller.poll_once()
        await poller.poll_once()
    finally:
        await poller.close()
        server.close()
    assert asked == ["/load", "/metrics"]
    state = fleet.pods["ns/joe-1"]
    assert (state.reported_work_s, state.reported_depth, state.reported_in_flight) == (2.75, 3, 1)
    assert metrics.scrape_errors_total._value.get() == 0


async def test_a_pod_whose_load_does_not_hold_is_polled_not_asked_in_a_loop() -> None:
    """A pod older than the long-poll answers ``/load?wait=`` at once and without the wait
    header: the watch polls it every ``after_s`` as before, instead of asking again every
    50 ms; one that holds is asked once per wait (here 0.4 s)."""
    import asyncio

    from voicefleet_inference.router.fleet import Fleet, PodInfo, VoiceInfo
    from voicefleet_inference.router.metrics import create_metrics
    from voicefleet_inference.router.poll import LoadPoller

    asked: dict[str, list[str]] = {"old": [], "new": []}
    seq = 0

    async def fake_pod(
        kind: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A fake pod at our own seam: a loopback socket, a plain idle /load answer."""
        nonlocal seq
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            path = head.split(b" ", 2)[1].decode()
            asked[kind].append(path)
            held = b""
            if kind == "new" and "wait=" in path:
                if not path.endswith("after=0"):
                    await asyncio.sleep(0.4)  # nothing changes on an idle pod
                held = b"x-voicefleet-load-wait: 0.4\r\n"
            seq += 1
            body = f"work_s=0.000,depth=0,in_flight=0,seq={seq}".encode()
            writer.write(_http_answer(b"200 OK", body, held))
            await writer.drain()
        writer.close()

    servers = [
        await asyncio.start_server(lambda r, w, k=kind: fake_pod(k, r, w), "127.0.0.1", 0)
        for kind in ("old", "new")
    ]
    fleet = Fleet("ns", stale_after_s=1.0)
    voice = VoiceKey("ns", "joe")
    fleet.upsert_voice(VoiceInfo(voice, "m", 1.0))
    for kind, server in zip(("old", "new"), servers, strict=True):
        port = server.sockets[0].getsockname()[1]
        fleet.upsert_pod(PodInfo("ns", kind, voice, f"http://127.0.0.1:{port}", ready=True))
    poller = LoadPoller(
        fleet, create_metrics(), interval_s=0.1, after_s=0.3, timeout_s=1.0, wait_s=0.4
    )
    watch = asyncio.create_task(poller.run())
    try:
        await asyncio.sleep(2.0)
        assert not fleet.pods["ns/old"].silent(fleet.clock(), 1.0)
        assert not fleet.pods["ns/new"].silent(fleet.clock(), 1.0)
    finally:
        watch.cancel()
        await poller.close()
        for server in servers:
            server.close()
    assert 4 <= len(asked["old"]) <= 8, asked["old"]  # every ~0.3 s, not every 50 ms
    assert all(p.endswith("after=0") for p in asked["old"])
    assert 3 <= len(asked["new"]) <= 7, asked["new"]  # about one per 0.4 s hold
    assert all(not p.endswith("after=0") for p in asked["new"][1:])


def test_cost_estimate_is_the_servers_model_and_tolerates_bad_fields() -> None:
    text = "Hello there."
    assert estimate_cost(text, 1.0) == REFERENCE_COST.estimate(text)
    assert estimate_cost(text, 2) == REFERENCE_COST.estimate(text, 2.0)
    assert estimate_cost(None, "fast") == REFERENCE_COST.estimate("")
    assert estimate_cost(text, -1) == REFERENCE_COST.estimate(text)
    assert estimate_cost("x" * 400, 1.0) > 10 * estimate_cost("Hi.", 1.0)


def test_the_playground_page_has_its_stable_ids_and_no_external_resource() -> None:
    page = playground_html()
    for element in ("voice", "text", "speak", "download", "ttfa", "status", "token", "player"):
        assert f'id="{element}"' in page
    assert "http://" not in page
    assert "https://" not in page


def test_a_gone_pod_leaves_no_metric_series_behind() -> None:
    from prometheus_client import generate_latest

    from voicefleet_inference.router.fleet import Fleet, PodInfo, VoiceInfo
    from voicefleet_inference.router.metrics import create_metrics

    metrics = create_metrics()
    fleet = Fleet("ns")
    fleet.on_pod_gone(lambda pod: metrics.forget_pod(str(pod.voice), pod.name))
    voice = VoiceKey("ns", "joe")
    fleet.upsert_voice(VoiceInfo(voice, "m", 1.0))
    fleet.upsert_pod(PodInfo("ns", "joe-1", voice, "http://127.0.0.9:8080", ready=True))
    metrics.upstream_requests_total.labels("ns/joe", "joe-1", "ok").inc()
    assert b'pod="joe-1"' in generate_latest(metrics.registry)
    fleet.remove_pod("ns/joe-1")
    assert b'pod="joe-1"' not in generate_latest(metrics.registry)
