"""A voice's priority settings: from the TTSVoice spec to the server's settings."""

from __future__ import annotations

from typing import Any

import pytest
from kube_env import resolve_env

from voicefleet_inference.settings import load_settings
from voicefleet_operator.builders import BuildOptions, build_deployment
from voicefleet_operator.spec import SpecError, parse_voice


def _voice(**server: Any) -> Any:
    body = {
        "apiVersion": "voicefleet.io/v1alpha1",
        "kind": "TTSVoice",
        "metadata": {"name": "joe", "namespace": "voices", "uid": "u1", "generation": 1},
        "spec": {"model": {"bundled": "en_US-joe-medium"}, "server": server},
    }
    return parse_voice(body)


def _server_env(**server: Any) -> dict[str, str]:
    deployment = build_deployment(_voice(**server), BuildOptions())
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    pod = {"metadata": {"name": "joe-abc", "namespace": "voices"}, "spec": spec}
    return resolve_env(container, pod, base_env={}, pod_ip="127.0.0.9", host_ip="127.0.0.1")


def test_the_spec_reaches_the_server_settings() -> None:
    env = _server_env(
        workers=4, defaultPriority="sheddable", priorityWaitTargetMs=1500, priorityReservedWorkers=1
    )
    settings = load_settings([], env, cores=64)
    assert settings.default_priority == "sheddable"
    assert settings.priority_wait_target_s == 1.5
    assert settings.priority_reserved_workers == 1


def test_defaults_are_standard_priority_and_no_shedding() -> None:
    settings = load_settings([], _server_env(), cores=64)
    assert settings.default_priority == "standard"
    assert settings.priority_wait_target_s == 0
    assert settings.priority_reserved_workers == 0


def test_an_unknown_default_priority_is_refused_naming_the_field() -> None:
    with pytest.raises(SpecError, match="defaultPriority"):
        _voice(defaultPriority="urgent")
