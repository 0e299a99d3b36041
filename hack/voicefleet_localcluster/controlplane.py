"""Start and stop one local cluster: etcd, kube-apiserver, controller-manager, scheduler, and
the real node (the kubelet on containerd + runc with CNI, kube-proxy, kube-router's
firewall and CoreDNS; see `node`). The API server listens on the node address 198.18.0.1,
so pods reach it through the `kubernetes` Service. One node runs per host.

Layout of a cluster's work dir (a fresh temp dir, removed on stop):

    pki/        CA, serving and client certificates, service-account keys
    etcd/       etcd's data dir
    logs/       one log file per component
    *.kubeconfig

All components start at once (the controller-manager, scheduler and kubelet
retry until the API server answers), which is what keeps a warm start short;
readiness is then awaited in dependency order. Every process runs in its own
process group and carries the cluster's marker in its environment (see `procs`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx
import yaml

from voicefleet_localcluster import binaries, nodeimages, pki, preflight
from voicefleet_localcluster import node as realnode
from voicefleet_localcluster.kubeapi import ApiError, KubeClient
from voicefleet_localcluster.kubeconfig import KubeConfig
from voicefleet_localcluster.procs import (
    MARKER_ENV,
    alive,
    become_subreaper,
    has_marker,
    kill_marked,
    terminate_groups,
)

# RFC 2544 benchmarking range: cannot collide with a real network (see `node`).
SERVICE_CIDR = realnode.SERVICE_CIDR
SERVICE_IP = realnode.KUBERNETES_SERVICE_IP
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
PROFILING_ENV = "VOICEFLEET_APISERVER_PROFILING"
"""Set to 1 to serve the API server's /debug/pprof (for benchmarks that profile it, e.g.
``voicefleet_bench.apply_cost --pprof``); off otherwise, as in production setups."""
DEFAULT_NODE = "voicefleet-local"
STOP_ORDER = ("kubelet", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")

Logger = Callable[[str], None]


class ClusterStartError(RuntimeError):
    """A component failed to start or become ready; the message carries its log tail."""


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (held together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tail(path: Path, lines: int = 40) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(content[-lines:])


@dataclass
class ClusterState:
    """What `down` and `status` need to find a running cluster again (saved as JSON)."""

    cluster_id: str
    work_dir: Path
    kubeconfig: Path
    server: str
    bin_dir: Path
    node_name: str
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    pod_logs_dir: str = ""
    started_seconds: float = 0.0
    owns_node: bool = True
    """False for a start the one-node-per-host guard refused: stopping it must leave the
    node (another cluster's) alone."""

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        data: dict[str, Any] = json.loads(path.read_text())
        for key in ("work_dir", "kubeconfig", "bin_dir"):
            data[key] = Path(data[key])
        known = {f.name for f in fields(cls)}  # a file an older checkout wrote may carry more
        return cls(**{k: v for k, v in data.items() if k in known})


def _print(line: str) -> None:
    print(f"[voicefleet-cluster] {line}", file=sys.stderr, flush=True)


class ControlPlane:
    """One local cluster. `start()` returns once the API server is ready and the node Ready.

    ``real_node=False`` starts the control plane alone, on 127.0.0.1, with no kubelet and
    nothing of the host's one real node touched (no preflight, no bridge, no node dirs):
    for benchmarks whose nodes are faked (kwok, ``voicefleet_bench.fleet``), which may run
    beside a real node another session owns.
    """

    def __init__(
        self,
        *,
        bin_dir: Path,
        kubeconfig_path: Path | None = None,
        work_root: Path | None = None,
        node_name: str = DEFAULT_NODE,
        gpus: int = 4,
        log: Logger = _print,
        real_node: bool = True,
    ) -> None:
        self.bin_dir = bin_dir
        self.real_node = real_node
        self.node_name = node_name
        self.gpus = gpus
        self.log = log
        self.owns_node = False  # until the one-node-per-host guard lets this start pass
        self.cluster_id = secrets.token_hex(6)
        root = work_root or Path(tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(tempfile.mkdtemp(prefix="voicefleet-cluster-", dir=root))
        self.kubeconfig = kubeconfig_path or self.work_dir / "admin.kubeconfig"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.state: ClusterState | None = None

    # -- assembly ------------------------------------------------------------------------

    def _pki(self) -> dict[str, pki.KeyPair]:
        directory = self.work_dir / "pki"
        ca = pki.make_ca(directory)
        leaves: dict[str, dict[str, Any]] = {
            "apiserver": {
                "common_name": "kube-apiserver",
                "server": True,
                "client": False,
                "dns_names": [
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
                "ips": ["127.0.0.1", SERVICE_IP, realnode.NODE_IP],
            },
            "admin": {"common_name": "kubernetes-admin", "organizations": ["system:masters"]},
            "apiserver-kubelet-client": {
                "common_name": "kube-apiserver-kubelet-client",
                "organizations": ["system:masters"],
            },
            "kubelet-serving": {
                "common_name": f"system:node:{self.node_name}",
                "organizations": ["system:nodes"],
                "server": True,
                "client": False,
                "dns_names": ["localhost", self.node_name],
                "ips": ["127.0.0.1", realnode.NODE_IP],
            },
            "kube-proxy": {"common_name": "system:kube-proxy"},
            "controller-manager": {"common_name": "system:kube-controller-manager"},
            "scheduler": {"common_name": "system:kube-scheduler"},
            "kubelet": {
                "common_name": f"system:node:{self.node_name}",
                "organizations": ["system:nodes"],
            },
            "kube-router": {"common_name": realnode.KUBE_ROUTER_USER},
        }
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {
                name: pool.submit(pki.issue, ca, directory, name, **spec)
                for name, spec in leaves.items()
            }
            pool.submit(pki.make_service_account_keys, directory).result()
            pairs = {name: future.result() for name, future in futures.items()}
        pairs["ca"] = ca
        return pairs

    def _kubeconfig(self, server: str, ca: pki.KeyPair, pair: pki.KeyPair, user: str) -> KubeConfig:
        return KubeConfig(
            server=server,
            ca_pem=ca.cert.read_bytes(),
            cert_pem=pair.cert.read_bytes(),
            key_pem=pair.key.read_bytes(),
            user=user,
        )

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        log_path = self.work_dir / "logs" / f"{name}.log"
        self.logs[name] = log_path
        env = {
            # sbin too: the node's kubelet and kube-proxy run iptables, mount, ip.
            "PATH": f"{self.bin_dir}:{SYSTEM_PATH}",
            "HOME": str(Path.home()),
            "LANG": "C.UTF-8",
            MARKER_ENV: self.cluster_id,
        }
        with log_path.open("ab") as handle:
            self.procs[name] = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.work_dir,
                start_new_session=True,
            )

    def start(self, *, timeout: float = 120.0) -> ClusterState:
        """Start everything; raises PreflightError (before touching anything) when the
        machine cannot run the real node, ClusterStartError when a component fails."""
        if self.real_node:
            preflight.check()
            # Built on first use (minutes), before the start's deadline runs.
            binaries.ensure_kube_router(self.log)
        t0 = time.monotonic()
        try:
            state = self._start(timeout)
        except BaseException as exc:
            detail = str(exc)
            self.log(f"start failed after {time.monotonic() - t0:.1f}s: {detail.splitlines()[0]}")
            kept = self.stop(keep_logs=True)
            if kept is None:
                raise
            self.log(f"component logs kept in {kept}")
            if isinstance(exc, ClusterStartError):  # point at the logs that still exist
                raise ClusterStartError(
                    detail.replace(str(self.work_dir / "logs"), str(kept))
                ) from exc
            raise
        state.started_seconds = round(time.monotonic() - t0, 2)
        # A copy inside the work dir lets `voicefleet-cluster down --state-dir <work dir>`
        # clean up a cluster whose owner (e.g. a killed test session) never stopped it.
        state.save(self.work_dir / "state.json")
        self.log(f"cluster ready in {state.started_seconds:.1f}s; KUBECONFIG={self.kubeconfig}")
        return state

    def _start(self, timeout: float) -> ClusterState:
        deadline = time.monotonic() + timeout
        if self.real_node:
            self._prepare_real_node()
        (self.work_dir / "etcd").mkdir(mode=0o700)
        for sub in ("logs", "kcm-certs", "scheduler-certs", "apiserver-certs"):
            (self.work_dir / sub).mkdir(parents=True, exist_ok=True)
        certs = self._pki()
        etcd_port, peer_port, api_port, kcm_port, sched_port, kubelet_port = free_ports(6)
        api_host = realnode.NODE_IP if self.real_node else "127.0.0.1"
        server = f"https://{api_host}:{api_port}"
        ca = certs["ca"]
        admin = self._kubeconfig(server, ca, certs["admin"], "admin")
        admin.write(self.kubeconfig)
        kubeconfigs = {}
        for name, user in (
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
            ("kubelet", f"system:node:{self.node_name}"),
            ("kube-proxy", "system:kube-proxy"),
            ("kube-router", realnode.KUBE_ROUTER_USER),
        ):
            path = self.work_dir / f"{name}.kubeconfig"
            if name == "kube-router" and self.real_node:
                # In NODE_RUN: a process naming a node dir is how a crashed node's
                # leftovers are found (`realnode.references_node`), kube-router's too.
                path = realnode.KUBE_ROUTER_KUBECONFIG
            self._kubeconfig(server, ca, certs[name], user).write(path)
            kubeconfigs[name] = str(path)
        pki_dir = self.work_dir / "pki"
        b = self.bin_dir
        etcd_client = f"http://127.0.0.1:{etcd_port}"
        etcd_peer = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                str(b / "etcd"),
                "--name=default",
                f"--data-dir={self.work_dir / 'etcd'}",
                f"--listen-client-urls={etcd_client}",
                f"--advertise-client-urls={etcd_client}",
                f"--listen-peer-urls={etcd_peer}",
                f"--initial-advertise-peer-urls={etcd_peer}",
                f"--initial-cluster=default={etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_client}",
                f"--bind-address={api_host}",
                f"--advertise-address={api_host}",
                f"--secure-port={api_port}",
                f"--cert-dir={self.work_dir / 'apiserver-certs'}",
                f"--tls-cert-file={certs['apiserver'].cert}",
                f"--tls-private-key-file={certs['apiserver'].key}",
                f"--client-ca-file={ca.cert}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki_dir / 'sa.pub'}",
                f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # `kubectl logs` goes through the API server to the kubelet's log endpoint.
                f"--kubelet-client-certificate={certs['apiserver-kubelet-client'].cert}",
                f"--kubelet-client-key={certs['apiserver-kubelet-client'].key}",
                f"--kubelet-certificate-authority={ca.cert}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--profiling={'true' if os.environ.get(PROFILING_ENV) == '1' else 'false'}",
            ],
        )
        if self.real_node:
            self._start_real_node(certs, kubeconfigs, kubelet_port, deadline)
        self.state = ClusterState(
            cluster_id=self.cluster_id,
            work_dir=self.work_dir,
            kubeconfig=self.kubeconfig,
            server=server,
            bin_dir=self.bin_dir,
            node_name=self.node_name,
            pids={name: proc.pid for name, proc in self.procs.items()},
            logs={name: str(path) for name, path in self.logs.items()},
            ports={
                "etcd": etcd_port,
                "etcd-peer": peer_port,
                "kube-apiserver": api_port,
                "kube-controller-manager": kcm_port,
                "kube-scheduler": sched_port,
                "kubelet": kubelet_port,
            },
            pod_logs_dir=str(realnode.KUBELET_HOST_DIRS[0]),
            owns_node=self.owns_node,
        )
        client = KubeClient(admin, timeout=5.0)
        try:
            self._await("kube-apiserver", deadline, client.healthy)
            # These two exit (rather than retry) when RBAC is not bootstrapped yet.
            self._spawn(
                "kube-controller-manager",
                [
                    str(b / "kube-controller-manager"),
                    f"--kubeconfig={kubeconfigs['controller-manager']}",
                    f"--authentication-kubeconfig={kubeconfigs['controller-manager']}",
                    f"--authorization-kubeconfig={kubeconfigs['controller-manager']}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={kcm_port}",
                    f"--cert-dir={self.work_dir / 'kcm-certs'}",
                    "--leader-elect=false",
                    "--controllers=*",
                    "--use-service-account-credentials=true",
                    f"--root-ca-file={ca.cert}",
                    f"--service-account-private-key-file={pki_dir / 'sa.key'}",
                    f"--cluster-signing-cert-file={ca.cert}",
                    f"--cluster-signing-key-file={ca.key}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    "--cluster-name=voicefleet-local",
                    "--profiling=false",
                ],
            )
            self._spawn(
                "kube-scheduler",
                [
                    str(b / "kube-scheduler"),
                    f"--kubeconfig={kubeconfigs['scheduler']}",
                    f"--authentication-kubeconfig={kubeconfigs['scheduler']}",
                    f"--authorization-kubeconfig={kubeconfigs['scheduler']}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={sched_port}",
                    f"--cert-dir={self.work_dir / 'scheduler-certs'}",
                    "--leader-elect=false",
                    "--profiling=false",
                ],
            )
            self.state.pids.update({n: p.pid for n, p in self.procs.items()})
            self.state.logs.update({n: str(p) for n, p in self.logs.items()})
            for name, port in (
                ("kube-controller-manager", kcm_port),
                ("kube-scheduler", sched_port),
            ):
                self._await(name, deadline, lambda p=port: _https_ok(p))  # type: ignore[misc]
            if self.real_node:
                self._await("kubelet", deadline, lambda: _node_ready(client, self.node_name))
                self._finish_real_node(client, deadline)
        finally:
            client.close()
        return self.state

    # -- the real node ---------------------------------------------------------------------

    def _prepare_real_node(self) -> None:
        """Clear a previous node's leftovers; network and containerd up."""
        owner = realnode.owner_of_running_node()
        if owner is not None:
            raise ClusterStartError(
                f"a real node already runs on this host for local cluster {owner} (one per "
                "host): stop it first (`make down`, or the test session that started it)"
            )
        self.owns_node = True
        become_subreaper()
        self.log("clearing whatever an earlier node left on this host")
        realnode.reset_node(kube_proxy=self.bin_dir / "kube-proxy", log=self.log)
        realnode.write_configs(sandbox_image=nodeimages.PAUSE_IMAGE)
        realnode.prepare_network(self.log)
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.log(f"starting containerd ({realnode.CONTAINERD_SOCKET})")
        self._spawn("containerd", ["containerd", "--config", str(realnode.CONTAINERD_CONFIG)])

    def _start_real_node(
        self,
        certs: dict[str, pki.KeyPair],
        kubeconfigs: dict[str, str],
        kubelet_port: int,
        deadline: float,
    ) -> None:
        """Images into containerd, then the kubelet and kube-proxy (they retry the API)."""
        self._await("containerd", deadline, realnode.containerd_ready)
        started = time.monotonic()
        nodeimages.ensure_images(self.bin_dir, binaries.read_versions(), self.log)
        self.log(f"node images present (+{time.monotonic() - started:.1f}s)")
        kubelet_healthz, proxy_healthz, proxy_metrics = free_ports(3)
        commands = realnode.node_commands(
            bin_dir=self.bin_dir,
            node_name=self.node_name,
            kubelet_kubeconfig=Path(kubeconfigs["kubelet"]),
            kube_proxy_kubeconfig=Path(kubeconfigs["kube-proxy"]),
            ca_file=certs["ca"].cert,
            kubelet_cert=certs["kubelet-serving"].cert,
            kubelet_key=certs["kubelet-serving"].key,
            kubelet_port=kubelet_port,
            kubelet_healthz_port=kubelet_healthz,
            kube_proxy_healthz_port=proxy_healthz,
            kube_proxy_metrics_port=proxy_metrics,
        )
        self._spawn("kubelet", commands.kubelet)
        self._spawn("kube-proxy", commands.kube_proxy)

    def _finish_real_node(self, client: KubeClient, deadline: float) -> None:
        """Advertise the GPU count; kube-router's RBAC and CoreDNS applied; kube-router's
        firewall (NetworkPolicy) started; then cluster DNS (CoreDNS) up and answering."""
        if self.gpus > 0:
            # A node-level extended resource, as the Kubernetes docs advertise one: the
            # scheduler counts it; no device plugin is involved.
            client.merge_patch(
                f"/api/v1/nodes/{self.node_name}/status",
                {"status": {"capacity": {"nvidia.com/gpu": str(self.gpus)}}},
            )
        image = nodeimages.coredns_image(binaries.read_versions().coredns, self.bin_dir / "coredns")
        # kube-router's read-only RBAC with CoreDNS: one apply, before kube-router starts.
        manifests = yaml.safe_dump_all(
            [*realnode.kube_router_rbac(), *realnode.coredns_manifests(image)]
        )
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", "apply", "-f", "-"],
            input=manifests,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if proc.returncode != 0:
            raise ClusterStartError(f"applying CoreDNS failed: {proc.stderr.strip()}")
        (health_port,) = free_ports(1)
        self._spawn(
            "kube-router",
            realnode.kube_router_command(
                binaries.ensure_kube_router(self.log),
                kubeconfig=realnode.KUBE_ROUTER_KUBECONFIG,
                node_name=self.node_name,
                health_port=health_port,
            ),
        )
        self._await("kube-router", deadline, realnode.firewall_ready)
        self._await("coredns", deadline, lambda: _deployment_available(client, "coredns"))

    def _await(self, name: str, deadline: float, check: Callable[[], bool]) -> None:
        started = time.monotonic()
        while True:
            for component, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ClusterStartError(
                        f"{component} exited with code {proc.returncode}; "
                        f"log {self.logs[component]}, last lines:\n{tail(self.logs[component])}"
                    )
            if check():
                self.log(f"{name} ready (+{time.monotonic() - started:.1f}s)")
                return
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{name} not ready in time; log {self.logs[name]}, last lines:\n"
                    f"{tail(self.logs[name])}"
                )
            time.sleep(0.2)

    def stop(self, *, keep_logs: bool = False) -> Path | None:
        """Stop everything this object started; see `stop_cluster`."""
        state = self.state or ClusterState(
            cluster_id=self.cluster_id,
            work_dir=self.work_dir,
            kubeconfig=self.kubeconfig,
            server="",
            bin_dir=self.bin_dir,
            node_name=self.node_name,
            pids={name: proc.pid for name, proc in self.procs.items()},
            owns_node=self.owns_node,
        )
        kept = stop_cluster(state, keep_logs=keep_logs, log=self.log)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        return kept


def _https_ok(port: int) -> bool:
    try:
        return httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=2).is_success
    except httpx.HTTPError:
        return False


def _deployment_available(client: KubeClient, name: str, namespace: str = "kube-system") -> bool:
    try:
        obj = client.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    except (ApiError, httpx.HTTPError):
        return False
    return int((obj.get("status") or {}).get("readyReplicas") or 0) >= 1


def _node_ready(client: KubeClient, node: str) -> bool:
    """Ready=True and schedulable.

    The TaintNodesByCondition admission plugin taints every new Node
    `node.kubernetes.io/not-ready:NoSchedule`; the node-lifecycle controller lifts
    it once it sees the kubelet's Ready condition. Until then nothing schedules.
    """
    try:
        obj = client.get(f"/api/v1/nodes/{node}")
    except (ApiError, httpx.HTTPError):
        return False
    conditions = obj.get("status", {}).get("conditions", [])
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = obj.get("spec", {}).get("taints", []) or []
    return ready and not any(t.get("key") == "node.kubernetes.io/not-ready" for t in taints)


_STOP_GRACE = {"kubelet": 25.0, "kube-apiserver": 2.0}
"""Seconds from SIGTERM to SIGKILL per stage (by its first name). The kubelet ends its
pods. kube-apiserver outlived a 10 s grace on every stop (20:04, 3 December: 10.2 s of a
12 s stop), and its store is deleted right after: nothing is lost by ending it sooner."""


def stop_cluster(
    state: ClusterState, *, keep_logs: bool = False, log: Logger = _print
) -> Path | None:
    """End every process of the cluster and remove its work dir.

    The kubelet goes first so it can end its pods; then the control plane in
    reverse dependency order; then a sweep for any process still carrying the
    cluster's marker. Recorded pids are only signalled when their environment
    still carries the marker (a stale state file must never kill a stranger).
    With `keep_logs`, the logs dir survives (start failures) and its path is returned.
    """
    stages = (
        ["kubelet", "kube-proxy", "kube-router"],
        ["kube-scheduler", "kube-controller-manager"],
        ["kube-apiserver"],
        ["etcd"],
    )
    for stage in stages:
        pids = [
            state.pids[name]
            for name in stage
            if name in state.pids
            and alive(state.pids[name])
            and has_marker(state.pids[name], state.cluster_id)
        ]
        terminate_groups(pids, grace=_STOP_GRACE.get(stage[0], 10.0))
        if "kubelet" in stage and state.owns_node:
            # The node's pods, containerd, mounts, netns, iptables and bridge go before
            # the control plane, so nothing is left for a later start to trip over.
            t0 = time.monotonic()
            realnode.reset_node(kube_proxy=state.bin_dir / "kube-proxy", log=log)
            log(f"node reset in {time.monotonic() - t0:.1f}s")
    stragglers = kill_marked(state.cluster_id)
    if stragglers:
        log(f"killed {len(stragglers)} leftover process(es): {stragglers}")
    kept: Path | None = None
    if keep_logs and (state.work_dir / "logs").is_dir():
        kept = Path(tempfile.mkdtemp(prefix=f"voicefleet-cluster-logs-{state.cluster_id}-"))
        shutil.copytree(state.work_dir / "logs", kept, dirs_exist_ok=True)
    shutil.rmtree(state.work_dir, ignore_errors=True)
    if not state.kubeconfig.is_relative_to(state.work_dir):
        state.kubeconfig.unlink(missing_ok=True)
    return kept


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[tuple[ControlPlane, ClusterState]]:
    """Start a cluster for the duration of a `with` block."""
    plane = ControlPlane(**kwargs)
    state = plane.start()
    try:
        yield plane, state
    finally:
        plane.stop()
