"""Fixtures of the integration modules that run the operator (helpers: ``operatorprocs``)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from operatorprocs import (
    REPO,
    SA_NAME,
    SA_NAMESPACE,
    Operator,
    new_operator,
)

from voicefleet_localcluster.testing import LocalCluster


@pytest.fixture(scope="module")
def sa_kubeconfig(local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CRDs installed by the admin; the operator's identity is only the ServiceAccount."""
    local_cluster.kubectl_run(
        "apply",
        "-f",
        str(REPO / "crds" / "ttsvoices.yaml"),
        "-f",
        str(REPO / "crds" / "kopf-peering.yaml"),
    )
    local_cluster.kubectl_run(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/ttsvoices.voicefleet.io",
        "crd/clusterkopfpeerings.kopf.dev",
    )
    local_cluster.kubectl_run("create", "namespace", SA_NAMESPACE, check=False)
    local_cluster.apply(local_cluster.operator_rbac(SA_NAMESPACE))  # the chart's, the one source
    path = tmp_path_factory.mktemp("operator") / "sa.kubeconfig"
    return local_cluster.service_account_kubeconfig(SA_NAMESPACE, SA_NAME, path)


@pytest.fixture(scope="module")
def operator(
    sa_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Operator]:
    op = new_operator(
        sa_kubeconfig, tmp_path_factory.mktemp("operator-log") / "operator.log", priority=100
    )
    failed_before = request.session.testsfailed
    op.start()
    try:
        yield op
    finally:
        code = op.stop()
        if request.session.testsfailed > failed_before:
            kept = Path("/tmp") / f"voicefleet-operator-{os.getpid()}.log"
            shutil.copy(op.log_path, kept)
            tail = "\n".join(op.log().splitlines()[-80:])
            print(
                f"\n--- operator log kept at {kept} (exit {code}); tail:\n{tail}", file=sys.stderr
            )
