"""Which routers the autoscaler believes, and the namespaced mode's kopf settings.

Issue 18: a pod in another namespace carrying the routers' labels made the operator scale a
zero-replica voice up within 2 s. Router pods now count only in ``--router-namespace``
(the chart's own), and the flag is required with ``--router-pod-selector``.
"""

from __future__ import annotations

from typing import Any

import pytest

from voicefleet_operator.pods import router_indexer
from voicefleet_operator.settings import UsageError, parse_args
from voicefleet_operator.wiring import build_settings

SELECTOR = "app.kubernetes.io/name=voicefleet-router,app.kubernetes.io/instance=vf"


def router_pod(namespace: str, name: str = "router-1") -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": f"uid-{namespace}-{name}",
            "labels": {"app.kubernetes.io/name": "voicefleet-router"},
        },
        "status": {
            "podIP": "10.0.0.7",
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_a_router_label_match_counts_only_in_the_routers_namespace() -> None:
    index = router_indexer("voicefleet-system")
    assert index(router_pod("attacker")) == {}
    (entry,) = index(router_pod("voicefleet-system")).values()
    assert entry.serving
    assert entry.ip == "10.0.0.7"


def test_the_router_selector_needs_the_routers_namespace() -> None:
    with pytest.raises(UsageError, match="needs --router-namespace"):
        parse_args(["-A", "--router-pod-selector", SELECTOR])
    config = parse_args(
        ["-A", "--router-pod-selector", SELECTOR, "--router-namespace", "voicefleet-system"]
    )
    assert config.router_namespace == "voicefleet-system"
    with pytest.raises(UsageError, match="not a valid namespace"):
        parse_args(["-A", "--router-namespace", "Not_A_Namespace"])


def test_in_namespaced_mode_the_routers_namespace_must_be_watched() -> None:
    args = ["--router-pod-selector", SELECTOR, "--router-namespace", "voicefleet-system"]
    with pytest.raises(UsageError, match="add --namespace voicefleet-system"):
        parse_args(["-n", "team-a", *args])
    assert parse_args(["-n", "team-a", "-n", "voicefleet-system", *args]).namespaces == (
        "team-a",
        "voicefleet-system",
    )
    assert parse_args(["-n", "voicefleet-*", *args]).router_namespace == "voicefleet-system"


def test_the_router_token_comes_from_the_environment_or_a_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    assert parse_args(["-A"]).router_token is None
    assert parse_args(["-A", "--router-token-file", str(path)]).router_token_file == path
    monkeypatch.setenv("VOICEFLEET_OPERATOR_ROUTER_TOKEN", "from-the-secret")
    token = parse_args(["-A"]).router_token
    assert token is not None
    assert token.get_secret_value() == "from-the-secret"
    assert "from-the-secret" not in repr(parse_args(["-A"]))  # never in a log line
    with pytest.raises(UsageError, match="exclude each other"):
        parse_args(["-A", "--router-token-file", str(path)])


def test_the_routers_metrics_token_setting(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from voicefleet_inference.router.settings import SettingsError, load_settings

    assert load_settings([]).scrape_token() is None
    monkeypatch.setenv("VOICEFLEET_ROUTER_METRICS_TOKEN", "t0k3n")
    settings = load_settings([])
    assert settings.scrape_token() == "t0k3n"
    assert "metrics-auth=on" in settings.summary()
    monkeypatch.delenv("VOICEFLEET_ROUTER_METRICS_TOKEN")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match="METRICS_TOKEN_FILE"):
        load_settings([f"--metrics-token-file={empty}"]).scrape_token()


@pytest.mark.parametrize(
    ("argv", "disabled"),
    [
        (["-A"], False),
        (["-n", "team-a", "-n", "team-b"], True),
        (["-n", "team-*"], False),  # globs need the namespace list
    ],
)
def test_kopf_scans_namespaces_and_crds_only_when_it_must(argv: list[str], disabled: bool) -> None:
    """Named namespaces (the chart's Role-only mode): no cluster-wide list kopf could be
    refused, so no warning per start and no ClusterRole needed."""
    assert build_settings(parse_args(argv)).scanning.disabled is disabled
