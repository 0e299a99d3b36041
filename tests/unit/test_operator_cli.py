"""voicefleet-operator's command line: what it accepts, what it refuses, its exit codes.

No cluster: `parse_args` is pure, and `main` fails before contacting anything when
the flags or the kubeconfig are wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicefleet_operator.cli import EXIT_FAILED, EXIT_USAGE, main
from voicefleet_operator.settings import (
    DEFAULT_HEALTH_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_PEERING,
    DEFAULT_WORKERS,
    UsageError,
    parse_args,
)
from voicefleet_operator.spec import DEFAULT_IMAGE


def test_defaults_for_a_cluster_wide_operator() -> None:
    config = parse_args(["--all-namespaces"])
    assert config.clusterwide
    assert config.namespaces == ()
    assert config.health_port == DEFAULT_HEALTH_PORT
    assert config.metrics_port == DEFAULT_METRICS_PORT
    assert config.peering is None
    assert config.peering_name == DEFAULT_PEERING
    assert not config.standalone
    assert config.workers == DEFAULT_WORKERS
    assert 1 <= config.priority <= 1_000_000
    assert config.kubeconfig is None
    assert config.default_image == DEFAULT_IMAGE  # the server image of this version


def test_repeated_namespaces_keep_order_without_duplicates() -> None:
    config = parse_args(["-n", "a", "--namespace", "b", "-n", "a", "-n", "team-*"])
    assert config.namespaces == ("a", "b", "team-*")
    assert not config.clusterwide


def test_every_flag_lands_in_the_config() -> None:
    config = parse_args(
        [
            "-A",
            "--health-port=0",
            "--metrics-port=9100",
            "--peering=prod",
            "--priority=7",
            "--default-image=registry.local/voicefleet-server:1",
            "--kubeconfig=/etc/kube/config",
            "--workers=8",
            "--verbose",
        ]
    )
    assert config.health_port is None
    assert config.metrics_port == 9100
    assert config.peering == "prod"
    assert config.peering_name == "prod"
    assert config.priority == 7
    assert config.default_image == "registry.local/voicefleet-server:1"
    assert config.kubeconfig == Path("/etc/kube/config")
    assert config.workers == 8
    assert config.verbose


def test_network_policy_peers_from_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args(["-A"]).network_policy_peers is None
    peers = [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}]
    assert parse_args(
        ["-A", f"--network-policy-from={json.dumps(peers)}"]
    ).network_policy_peers == (peers[0],)
    monkeypatch.setenv("VOICEFLEET_OPERATOR_NETWORK_POLICY_FROM", json.dumps(peers))
    assert parse_args(["-A"]).network_policy_peers == (peers[0],)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "one of the arguments -n/--namespace -A/--all-namespaces is required"),
        (["-A", "-n", "x"], "not allowed with argument"),
        (["-A", "--peering=p", "--standalone"], "not allowed with argument"),
        (["-n", "Bad_Name"], "is not a valid namespace name"),
        (["-A", "--health-port=70000"], "--health-port must be 0 (off) or a port 1..65535"),
        (["-A", "--metrics-port=-1"], "--metrics-port must be 0 (off)"),
        (["-A", "--health-port=9000", "--metrics-port=9000"], "are both 9000"),
        (["-A", "--peering=Not A Name"], "is not a valid object name"),
        (["-A", "--workers=0"], "--workers must be 1..256"),
        (["-A", "--health-port=abc"], "invalid int value"),
        (["-A", "--default-image= "], "--default-image must not be empty"),
        (["-A", "--bogus"], "unrecognized arguments: --bogus"),
        (["-A", "--network-policy-from=[{"], "--network-policy-from is not JSON"),
        (["-A", "--network-policy-from=[]"], "must be a non-empty JSON list"),
        (["-A", '--network-policy-from=[{"podSelektor": {}}]'], "is not a NetworkPolicyPeer"),
        (["-A", "--network-policy-from=[1]"], "is not a NetworkPolicyPeer"),
    ],
)
def test_bad_flags_say_what_to_fix(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_args(argv)
    assert message in str(caught.value)


def test_main_exits_2_on_bad_flags_with_usage_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--workers=0", "-A"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: voicefleet-operator")
    assert "error: --workers must be 1..256, got 0" in err


def test_main_exits_1_when_the_kubeconfig_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.kubeconfig"
    argv = ["-A", f"--kubeconfig={missing}", "--health-port=0", "--metrics-port=0"]
    assert main(argv) == EXIT_FAILED
    assert f"kubeconfig {missing} does not exist" in capsys.readouterr().err


def test_main_exits_1_when_the_kubeconfig_is_garbage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.kubeconfig"
    broken.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    argv = ["-A", f"--kubeconfig={broken}", "--health-port=0", "--metrics-port=0"]
    assert main(argv) == EXIT_FAILED
    assert "cannot load Kubernetes credentials" in capsys.readouterr().err
