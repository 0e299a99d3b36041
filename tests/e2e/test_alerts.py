"""The chart's alert rules, unit-tested by the real `promtool test rules`.

The rules are rendered by Helm from the chart (so the test sees what a cluster
would get, thresholds from values.yaml included) into a rule file next to the
promtool test cases in alerts/. promtool is built from its Go module
(hack/k8s/promtool) on first use and cached like the Kubernetes binaries.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from voicefleet_localcluster import binaries

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHART = REPO / "charts" / "voicefleet"


pytestmark = pytest.mark.promtool  # built beside `make test` (tests/conftest.py)


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    helm = binaries.ensure_binaries() / "helm"
    proc = subprocess.run(
        [
            str(helm),
            "template",
            "vf",
            str(CHART),
            "--set",
            "monitoring.prometheusRule.enabled=true",
            "--show-only",
            "templates/monitoring/prometheusrule.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    rule = yaml.safe_load(proc.stdout)
    directory = tmp_path_factory.mktemp("alerts")
    (directory / "rules.yaml").write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    shutil.copy(HERE / "alerts" / "voicefleet-alerts.test.yaml", directory)
    return directory


@pytest.fixture(scope="module")
def promtool() -> Path:
    return binaries.ensure_promtool()


def test_rules_are_valid(promtool: Path, rules_dir: Path) -> None:
    proc = subprocess.run(
        [str(promtool), "check", "rules", str(rules_dir / "rules.yaml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 4 rules found" in proc.stdout


def test_alert_unit_tests_pass(promtool: Path, rules_dir: Path) -> None:
    proc = subprocess.run(
        [str(promtool), "test", "rules", "voicefleet-alerts.test.yaml"],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_a_broken_expectation_fails(promtool: Path, rules_dir: Path, tmp_path: Path) -> None:
    """The harness can fail: the Degraded case expecting the wrong voice is caught."""
    cases = yaml.safe_load((rules_dir / "voicefleet-alerts.test.yaml").read_text())
    cases["tests"][0]["alert_rule_test"][1]["exp_alerts"][0]["exp_labels"]["voice"] = "prod/amy"
    shutil.copy(rules_dir / "rules.yaml", tmp_path)
    (tmp_path / "broken.test.yaml").write_text(yaml.safe_dump(cases))
    proc = subprocess.run(
        [str(promtool), "test", "rules", "broken.test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "VoiceFleetVoiceDegraded" in proc.stdout + proc.stderr
