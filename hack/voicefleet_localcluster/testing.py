"""`LocalCluster`: a running local cluster plus the helpers tests keep needing.

Framework-neutral (no pytest import) so scripts and benchmarks can use it too;
`pytest_plugin` wraps it in fixtures.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from voicefleet_localcluster import binaries, images
from voicefleet_localcluster.controlplane import ClusterState, ControlPlane

T = TypeVar("T")
Manifest = str | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def python_image() -> str:
    """An image with Python 3 in it for a test's own pods: our control image (the operator
    and router's), which the node has loaded. Use with `imagePullPolicy: Never`."""
    return images.image_ref(images.CONTROL, images.version())


class WaitTimeout(AssertionError):
    """A polled condition did not come true before its deadline."""


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout: float = 60.0,
    interval: float = 0.25,
    what: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy; return that value.

    Exceptions raised by `check` count as "not yet" (the last one is reported on
    timeout), so a check may simply index into an object that is not there yet.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm run whose message carries its stderr (the actual reason)."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stderr or '').strip()[-2000:]}"


def _dns_label(text: str, limit: int = 40) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:limit].strip("-") or "test"


OPERATOR_CHART = Path(__file__).resolve().parents[2] / "charts" / "voicefleet"


@dataclass
class LocalCluster:
    """A running cluster. Every path is absolute; `kubectl_run` targets this cluster only."""

    kubeconfig: Path
    bin_dir: Path
    server: str
    work_dir: Path
    node_name: str
    state: ClusterState
    plane: ControlPlane | None = None

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    @property
    def pod_logs_dir(self) -> Path:
        return Path(self.state.pod_logs_dir)

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG set and the cluster's binaries first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '')}"
        env.setdefault("HELM_CACHE_HOME", str(self.work_dir / "helm" / "cache"))
        env.setdefault("HELM_CONFIG_HOME", str(self.work_dir / "helm" / "config"))
        env.setdefault("HELM_DATA_HOME", str(self.work_dir / "helm" / "data"))
        return env

    def _run(
        self,
        binary: Path,
        args: Sequence[str],
        *,
        input: str | None,
        check: bool,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(binary), f"--kubeconfig={self.kubeconfig}", *map(str, args)]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise CommandError(proc.returncode, argv, output=proc.stdout, stderr=proc.stderr)
        return proc

    def kubectl_run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise CalledProcessError (with stderr) if check."""
        return self._run(self.kubectl, args, input=input, check=check, timeout=timeout)

    def helm_run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 300.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run helm against this cluster (helm's own state dirs live in the work dir)."""
        return self._run(self.helm, args, input=input, check=check, timeout=timeout)

    def operator_rbac(self, namespace: str = "voicefleet-system") -> str:
        """The operator's ServiceAccount, ClusterRole and binding as the chart renders them.

        The chart is the one RBAC source: tests and benchmarks that run the operator as its
        ServiceAccount apply exactly what ``helm install`` would (release ``voicefleet``, so
        the ServiceAccount is ``voicefleet-operator`` in ``namespace``).
        """
        templates = ("templates/operator/serviceaccount.yaml", "templates/operator/rbac.yaml")
        args = ["template", "voicefleet", str(OPERATOR_CHART), "--namespace", namespace]
        for template in templates:
            args += ["--show-only", template]
        return self.helm_run(*args).stdout

    def get_json(self, *args: str) -> dict[str, Any]:
        """`kubectl get <args> -o json`, decoded."""
        result: dict[str, Any] = json.loads(self.kubectl_run("get", *args, "-o", "json").stdout)
        return result

    def apply(
        self, manifest: Manifest, *, namespace: str | None = None, server_side: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f -` a YAML string, one object, or a list of objects."""
        if isinstance(manifest, str):
            text = manifest
        elif isinstance(manifest, Mapping):
            text = yaml.safe_dump(dict(manifest))
        else:
            text = yaml.safe_dump_all([dict(m) for m in manifest])
        args = ["apply", "-f", "-"]
        if namespace:
            args += ["-n", namespace]
        if server_side:
            args += ["--server-side"]
        return self.kubectl_run(*args, input=text)

    def install_crds(self) -> None:
        """Apply the repository's CRDs (server-side) and wait until TTSVoice is established.

        A CRD just applied may have no conditions yet, which `kubectl wait` takes for an
        error, so the wait is retried.
        """
        crds = Path(__file__).resolve().parents[2] / "crds"
        self.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(crds))
        established = (
            "wait",
            "--for=condition=Established",
            "--timeout=5s",
            "crd/ttsvoices.voicefleet.io",
        )
        wait_for(
            lambda: self.kubectl_run(*established, check=False).returncode == 0,
            timeout=60,
            what="the TTSVoice CRD established",
        )

    def create_namespace(self, prefix: str = "test", *, labels: Mapping[str, str] = {}) -> str:
        """Create a uniquely named namespace and wait until pods can be created in it.

        The ServiceAccount admission plugin rejects pods until the controller-manager
        has created the namespace's `default` ServiceAccount, so this waits for it.
        """
        name = f"{_dns_label(prefix)}-{secrets.token_hex(3)}"
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"voicefleet.io/test": "true", **labels}},
        }
        self.kubectl_run("create", "-f", "-", input=json.dumps(body))
        wait_for(
            lambda: (
                self.kubectl_run(
                    "get", "serviceaccount", "default", "-n", name, check=False
                ).returncode
                == 0
            ),
            timeout=60,
            what=f"the default ServiceAccount in {name}",
        )
        return name

    def delete_namespace(self, name: str, *, wait: bool = False) -> None:
        self.kubectl_run(
            "delete", "namespace", name, "--ignore-not-found", f"--wait={str(wait).lower()}"
        )

    @contextmanager
    def namespace(self, prefix: str = "test") -> Iterator[str]:
        """A fresh namespace for the duration of a `with` block."""
        name = self.create_namespace(prefix)
        try:
            yield name
        finally:
            self.delete_namespace(name)

    def pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = self.get_json(*args)["items"]
        return items

    def ready_pods(self, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        """Pods whose Ready condition is True and that are not being deleted."""
        return [
            p
            for p in self.pods(namespace, selector)
            if not p["metadata"].get("deletionTimestamp")
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p.get("status", {}).get("conditions", [])
            )
        ]

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, *, duration: str = "1h"
    ) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount (a fresh bound token).

        It holds no client certificate, so requests made with it are authorized
        exactly as the ServiceAccount's RBAC allows (x509 would win otherwise).
        """
        token = self.kubectl_run(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        admin = yaml.safe_load(self.kubeconfig.read_text())
        cluster = admin["clusters"][0]
        user = f"system:serviceaccount:{namespace}:{name}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [cluster],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": user,
                    "context": {"cluster": cluster["name"], "user": user, "namespace": namespace},
                }
            ],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def pod_log(self, namespace: str, pod: str) -> str:
        """The pod's first container's output, as `kubectl logs` reads it from the kubelet."""
        return self.kubectl_run("logs", pod, "-n", namespace, check=False).stdout

    def stop(self) -> None:
        if self.plane is not None:
            self.plane.stop()


def start_local_cluster(
    *,
    gpus: int = 4,
    log: Callable[[str], None] | None = None,
    timeout: float = 300.0,
    real_node: bool = True,
) -> LocalCluster:
    """Build the binaries if missing, start a cluster in a fresh temp dir, return it.

    The timeout covers a first start, which packs and imports the node's own images.
    ``real_node=False``: the control plane alone (see ``ControlPlane``), as the fleet
    benchmark runs it beside kwok's fake nodes.
    """
    say = log or (lambda line: None)
    bin_dir = binaries.ensure_binaries(log=say)
    kwargs: dict[str, Any] = {"bin_dir": bin_dir, "gpus": gpus, "real_node": real_node}
    if log is not None:
        kwargs["log"] = log
    plane = ControlPlane(**kwargs)
    state = plane.start(timeout=timeout)
    return LocalCluster(
        kubeconfig=state.kubeconfig,
        bin_dir=bin_dir,
        server=state.server,
        work_dir=state.work_dir,
        node_name=state.node_name,
        state=state,
        plane=plane,
    )
