"""The apply-cost benchmark's pure parts: the CRD without CEL, kubectl's -v=6 timings, and
the API server's request histograms turned into per-run figures."""

from __future__ import annotations

import calendar
import json

import yaml

from voicefleet_bench.apply_cost import CRD, kubectl_timings, server_view, without_cel


def test_without_cel_drops_every_rule_and_keeps_the_rest_of_the_schema() -> None:
    crd = yaml.safe_load(CRD.read_text())
    before = json.dumps(crd)
    stripped = without_cel(crd)
    assert json.dumps(crd) == before  # the original is left alone
    assert "x-kubernetes-validations" in before
    assert "x-kubernetes-validations" not in json.dumps(stripped)
    schema = stripped["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["model"]
    assert spec["properties"]["replicas"]["maximum"] == 1000


def test_kubectl_timings_add_up_response_times_and_throttling() -> None:
    started = calendar.timegm((2026, 12, 3, 12, 0, 0, 0, 0, 0)) + 0.25
    stderr = "\n".join(
        [
            "I1203 12:00:00.500000    7 loader.go:402] Config loaded from file",
            'I1203 12:00:00.750000    7 round_trippers.go:632] "Response" verb="GET" '
            'url="https://198.18.0.1:6443/api" status="200 OK" milliseconds=4',
            "I1203 12:00:01.000000    7 request.go:700] Waited for 120ms due to client-side "
            "throttling, not priority and fairness, request: PATCH:https://x",
            'I1203 12:00:02.250000    7 round_trippers.go:632] "Response" verb="PATCH" '
            'url="https://198.18.0.1:6443/apis/voicefleet.io/v1alpha1/namespaces/a/ttsvoices/v"'
            ' status="201 Created" milliseconds=16',
        ]
    )
    timings = kubectl_timings(stderr, started)
    assert timings["requests"] == {"GET": 1, "PATCH": 1}
    assert timings["waited_s"] == 0.02
    assert timings["throttled_s"] == 0.12
    assert timings["first_response_s"] == 0.5
    assert timings["last_response_s"] == 2.0


def test_server_view_gives_counts_and_mean_durations_without_watches() -> None:
    before = {
        ("apiserver_request_duration_seconds_count", "APPLY ttsvoices"): 10.0,
        ("apiserver_request_duration_seconds_sum", "APPLY ttsvoices"): 0.1,
        ("apiserver_request_duration_seconds_count", "WATCH pods"): 1.0,
        ("apiserver_request_duration_seconds_sum", "WATCH pods"): 100.0,
    }
    after = {
        ("apiserver_request_duration_seconds_count", "APPLY ttsvoices"): 110.0,
        ("apiserver_request_duration_seconds_sum", "APPLY ttsvoices"): 0.8,
        ("apiserver_request_duration_seconds_count", "WATCH pods"): 2.0,
        ("apiserver_request_duration_seconds_sum", "WATCH pods"): 400.0,
        ("apiserver_request_duration_seconds_count", "PATCH ttsvoices/status"): 4.0,
        ("apiserver_request_duration_seconds_sum", "PATCH ttsvoices/status"): 0.2,
    }
    view = server_view(before, after)
    assert view["requests"]["APPLY ttsvoices"] == {"count": 100, "mean_ms": 7.0}
    assert view["requests"]["PATCH ttsvoices/status"] == {"count": 4, "mean_ms": 50.0}
    assert next(iter(view["requests"])) == "APPLY ttsvoices"  # most requests first
    assert view["request_seconds"] == 0.9  # the watch's 300 s are not request time
