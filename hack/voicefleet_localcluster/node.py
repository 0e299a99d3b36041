"""The local cluster's real node: kubelet + containerd + runc, CNI bridge, kube-proxy, CoreDNS,
and kube-router's firewall, which enforces NetworkPolicy.

One real node per host: the kubelet, containerd, CNI and iptables all use host-wide
names, so the node lives in fixed places rather than in a cluster's temp dir:

    /var/lib/voicefleet-node/      NODE_ROOT (kept between clusters)
        containerd/                containerd's root: the image store survives `down`,
                                   so images are imported once
        containerd.toml            its config (CRI plugin: cgroupfs, overlayfs, our pause)
        cni/net.d/                 the one CNI network, `voicefleet`
        kubelet/                   the kubelet's --root-dir (wiped on `down`)
    /run/voicefleet-node/          NODE_RUN (wiped on `down`)
        containerd.sock            CONTAINERD_SOCKET: `make images` imports here
        containerd/                containerd's state dir

Addresses come from the RFC 2544 benchmarking block, which no real network uses:
pods get 198.18.0.0/16 on the bridge `vf0`, whose own address 198.18.0.1 is also the
node's InternalIP and where the API server listens (so pods reach it through the
`kubernetes` Service); Services get 198.19.0.0/16 (65k ClusterIPs). Pods have no
default route and a FORWARD guard rejects anything they send outside 198.18.0.0/15,
so no pod traffic leaves the host.

NetworkPolicy is enforced by kube-router's network-policy controller alone (built from its
Go module, `binaries.ensure_kube_router`; no routing, no service proxy: kube-proxy stays
the proxy): iptables chains `KUBE-ROUTER-*`, `KUBE-POD-FW-*`, `KUBE-NWPLCY-*` and ipsets
`KUBE-SRC-*`/`KUBE-DST-*`. Pods talk over one bridge, so `net.bridge.bridge-nf-call-iptables`
is set to 1: bridged pod-to-pod traffic then passes the iptables FORWARD chain, where those
rules are (without it, same-node pods would bypass every policy).

Everything here is either a pure renderer (configs, cleanup plans: unit-tested) or a
thin edge that runs `ip`, `iptables`, `ctr` and `umount`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicefleet_localcluster.procs import MARKER_ENV, alive

NODE_ROOT = Path("/var/lib/voicefleet-node")
NODE_RUN = Path("/run/voicefleet-node")
CONTAINERD_ROOT = NODE_ROOT / "containerd"
CONTAINERD_STATE = NODE_RUN / "containerd"
CONTAINERD_CONFIG = NODE_ROOT / "containerd.toml"
CONTAINERD_SOCKET = NODE_RUN / "containerd.sock"
CNI_CONF_DIR = NODE_ROOT / "cni" / "net.d"
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_NETWORK = "voicefleet"
CNI_STATE_DIRS = (Path("/var/lib/cni/networks") / CNI_NETWORK, Path("/var/lib/cni/results"))
KUBELET_ROOT = NODE_ROOT / "kubelet"
KUBELET_HOST_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"))
K8S_NAMESPACE = "k8s.io"  # containerd namespace the CRI plugin uses

BRIDGE = "vf0"
POD_CIDR = "198.18.0.0/16"
NODE_IP = "198.18.0.1"
SERVICE_CIDR = "198.19.0.0/16"
OWN_RANGE = "198.18.0.0/15"  # pods + Services: the only destinations pods may reach
KUBERNETES_SERVICE_IP = "198.19.0.1"
DNS_SERVICE_IP = "198.19.0.10"
CLUSTER_DOMAIN = "cluster.local"
GUARD_CHAIN = "VOICEFLEET-NODE"
# Chains the kubelet, kube-proxy, kube-router and the CNI plugins create; removed on
# teardown (kube-router's: KUBE-ROUTER-*, KUBE-POD-FW-*, KUBE-NWPLCY-*).
OWNED_CHAIN_PREFIXES = ("KUBE-", "CNI-", GUARD_CHAIN)
# ipsets kube-router's firewall creates (TMP-* while it swaps a set's contents); destroyed
# on teardown once no rule refers to them.
OWNED_IPSET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-", "TMP-", "inet6:KUBE-")
BRIDGE_NF_CALL_IPTABLES = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
KUBE_ROUTER_KUBECONFIG = NODE_RUN / "kube-router.kubeconfig"
KUBE_ROUTER_USER = "system:kube-router"
"""The identity kube-router's kubeconfig carries (a client certificate)."""
KUBE_ROUTER_READY_CHAIN = "KUBE-ROUTER-FORWARD"
"""kube-router creates this filter chain when its firewall starts: the node waits for it."""

Logger = Callable[[str], None]


def containerd_socket() -> Path:
    """The node's containerd socket: the one place images are loaded into (`make images`)."""
    return CONTAINERD_SOCKET


# -- configs (pure) -----------------------------------------------------------------------


def containerd_config(*, sandbox_image: str, runc: str = "/usr/sbin/runc") -> str:
    """containerd 1.6's TOML config for the node.

    restrict_oom_score_adj: root on this machine kind lacks CAP_SYS_RESOURCE, so runc
    cannot lower oom_score_adj and every sandbox would fail to start without it.
    The `opt` plugin is off so nothing is written to /opt.
    """
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
version = 2
root = "{CONTAINERD_ROOT}"
state = "{CONTAINERD_STATE}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[ttrpc]
  address = "{NODE_RUN / "containerd.ttrpc.sock"}"

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  max_container_log_line_size = 16384

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{runc}"

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{CNI_CONF_DIR}"
  max_conf_num = 1
"""


def cni_config() -> dict[str, Any]:
    """The node's CNI network list: bridge + host-local, portmap, loopback is implicit.

    No default route and no masquerading: a pod reaches its peers on the bridge, the
    node (198.18.0.1) and Services (198.19.0.0/16 via the gateway), nothing else.
    """
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "hairpinMode": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": SERVICE_CIDR}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(
    *,
    ca_file: Path,
    tls_cert: Path,
    tls_key: Path,
    port: int,
    healthz_port: int,
    max_pods: int = 250,
) -> dict[str, Any]:
    """The KubeletConfiguration: cgroupfs, no swap check, cgroup v1 allowed, our DNS.

    Eviction thresholds are near zero and image GC is off: the machine is shared
    and its disk is small, and an evicted pod or a garbage-collected image (there is
    no registry to pull it back from) would only look like a VoiceFleet failure.
    """
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(tls_cert),
        "tlsPrivateKeyFile": str(tls_key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca_file)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "failCgroupV1": False,
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [DNS_SERVICE_IP],
        "resolvConf": "",  # pods with dnsPolicy Default get no upstream: nothing leaves
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "imageServiceEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "maxPods": max_pods,
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "podPidsLimit": -1,
        "shutdownGracePeriod": "0s",
        "protectKernelDefaults": False,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "0s",
    }


def kube_proxy_config(
    *, kubeconfig: Path, node_name: str, healthz_port: int, metrics_port: int
) -> dict[str, Any]:
    """kube-proxy in iptables mode; conntrack sysctls left as the host has them."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": node_name,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"syncPeriod": "30s", "minSyncPeriod": "0s"},
    }


def kube_router_rbac() -> list[dict[str, Any]]:
    """Read-only access for kube-router's firewall: what it watches, nothing else.

    Its controller starts informers for pods, namespaces, NetworkPolicies (what a policy
    is made of), and services, endpoints, endpoint slices and nodes (its shared informer
    factory syncs them all before the firewall starts).
    """
    name = "voicefleet:kube-router"
    read = ["get", "list", "watch"]
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "namespaces", "services", "endpoints", "nodes"],
                    "verbs": read,
                },
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": read,
                },
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": KUBE_ROUTER_USER}
            ],
        },
    ]


def kube_router_command(
    binary: Path, *, kubeconfig: Path, node_name: str, health_port: int
) -> list[str]:
    """kube-router as the node's NetworkPolicy firewall only (kube-proxy stays the proxy)."""
    return [
        str(binary),
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={node_name}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--health-port={health_port}",
        "--metrics-port=0",
        # Policies apply on every pod, policy and namespace event; the periodic full
        # resync is only a safety net.
        "--iptables-sync-period=1m",
        "--v=1",
    ]


COREDNS_PORT = 1053  # unprivileged inside the pod; the Service maps 53 to it


def corefile() -> str:
    """Cluster names only: with no `forward`, other names fail instead of leaving the host."""
    return f"""\
.:{COREDNS_PORT} {{
    errors
    health 127.0.0.1:8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    cache 30
}}
"""


def coredns_manifests(image: str) -> list[dict[str, Any]]:
    """CoreDNS as a cluster would run it: a Deployment behind kube-dns at DNS_SERVICE_IP."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"namespace": "kube-system", "labels": labels}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "coredns", **meta},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns", "labels": labels},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns", "labels": labels},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", **meta},
            "data": {"Corefile": corefile()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", **meta},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "runAsGroup": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {
                                        "name": "dns",
                                        "containerPort": COREDNS_PORT,
                                        "protocol": "UDP",
                                    },
                                    {
                                        "name": "dns-tcp",
                                        "containerPort": COREDNS_PORT,
                                        "protocol": "TCP",
                                    },
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 2,
                                },
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "32Mi"},
                                    "limits": {"memory": "128Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", **meta},
            "spec": {
                "selector": labels,
                "clusterIP": DNS_SERVICE_IP,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": COREDNS_PORT, "protocol": "UDP"},
                    {
                        "name": "dns-tcp",
                        "port": 53,
                        "targetPort": COREDNS_PORT,
                        "protocol": "TCP",
                    },
                ],
            },
        },
    ]


def guard_rules() -> list[list[str]]:
    """iptables arguments for the FORWARD guard: pods reach only our own range."""
    return [
        ["-N", GUARD_CHAIN],
        ["-A", GUARD_CHAIN, "-s", POD_CIDR, "-d", OWN_RANGE, "-j", "RETURN"],
        ["-A", GUARD_CHAIN, "-s", POD_CIDR, "-j", "REJECT"],
        ["-I", "FORWARD", "1", "-j", GUARD_CHAIN],
    ]


# -- cleanup plans (pure) -----------------------------------------------------------------


def owned_chain(name: str) -> bool:
    return name.startswith(OWNED_CHAIN_PREFIXES)


def iptables_cleanup(save_text: str) -> list[list[str]]:
    """iptables argument lists that remove our chains from one table's `iptables-save`.

    Rules in other chains that jump to ours are deleted first (`-D` with the rule's
    own spec), then our chains are flushed, then deleted; rules of chains we do not
    own that do not mention ours are never touched.
    """
    table = ""
    chains: list[str] = []
    jumps: list[list[str]] = []
    for line in save_text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if owned_chain(name):
                chains.append(name)
        elif line.startswith("-A "):
            parts = shlex.split(line)
            chain = parts[1]
            target = parts[parts.index("-j") + 1] if "-j" in parts else ""
            if not owned_chain(chain) and owned_chain(target):
                jumps.append(["-t", table, "-D", chain, *parts[2:]])
    flushes = [["-t", table, "-F", chain] for chain in chains]
    deletes = [["-t", table, "-X", chain] for chain in chains]
    return jumps + flushes + deletes


def ipset_cleanup(names_text: str) -> list[list[str]]:
    """`ipset` argument lists that destroy our sets, from `ipset list -n`.

    Run after the iptables cleanup: a set still referenced by a rule cannot be destroyed.
    Sets of other programs are never touched.
    """
    names = [line.strip() for line in names_text.splitlines() if line.strip()]
    ours = [name for name in names if name.startswith(OWNED_IPSET_PREFIXES)]
    return [["destroy", name] for name in ours]


def mounts_under(mounts_text: str, roots: Sequence[Path]) -> list[str]:
    """Mount points (from /proc/self/mounts) at or below any root, deepest first."""
    found = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        point = fields[1].replace("\\040", " ")
        if any(point == str(r) or point.startswith(f"{r}/") for r in roots):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def references_node(cmdline: Sequence[str]) -> bool:
    """True for a process started for the node: it names one of the node's fixed dirs."""
    text = " ".join(cmdline)
    return str(NODE_ROOT) in text or str(NODE_RUN) in text


# -- host edges ---------------------------------------------------------------------------


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 60) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ctr(*args: str, check: bool = True, timeout: float = 300) -> str:
    """`ctr` against the node's containerd, in the CRI's namespace."""
    argv = ["ctr", "--address", str(CONTAINERD_SOCKET), "--namespace", K8S_NAMESPACE, *args]
    return _run(argv, check=check, timeout=timeout)


def containerd_ready() -> bool:
    if not CONTAINERD_SOCKET.exists():
        return False
    try:
        ctr("version", timeout=10)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


def ensure_containerd(log: Logger = lambda line: None, *, timeout: float = 30.0) -> Path:
    """The node's containerd socket, starting containerd alone when none answers.

    For `make images` without a cluster: the image store is the node's, so images
    imported now are there when the node starts (which restarts containerd itself).
    """
    if containerd_ready():
        return CONTAINERD_SOCKET
    from voicefleet_localcluster.nodeimages import PAUSE_IMAGE

    write_configs(sandbox_image=PAUSE_IMAGE)
    log_path = NODE_ROOT / "containerd-alone.log"
    log(f"starting containerd alone (log {log_path})")
    with log_path.open("ab") as handle:
        subprocess.Popen(
            ["containerd", "--config", str(CONTAINERD_CONFIG)],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not containerd_ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"containerd did not answer in {timeout:.0f}s; see {log_path}")
        time.sleep(0.2)
    return CONTAINERD_SOCKET


def write_configs(*, sandbox_image: str) -> None:
    """Create the node's dirs and write containerd's and CNI's configs."""
    for directory in (NODE_ROOT, NODE_RUN, CNI_CONF_DIR, KUBELET_ROOT, *KUBELET_HOST_DIRS):
        directory.mkdir(parents=True, exist_ok=True)
    NODE_ROOT.chmod(0o711)
    CONTAINERD_CONFIG.write_text(containerd_config(sandbox_image=sandbox_image))
    (CNI_CONF_DIR / f"10-{CNI_NETWORK}.conflist").write_text(json.dumps(cni_config(), indent=2))


def prepare_network(log: Logger) -> None:
    """The bridge with the node address, the route to Services, forwarding and its guard."""
    _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    _run(["ip", "addr", "add", f"{NODE_IP}/16", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    # Host-originated traffic to a ClusterIP leaves from the node address, which pods
    # can answer directly (no masquerading needed).
    _run(["ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP])
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    saved = NODE_ROOT / "ip_forward.orig"
    if not saved.exists():
        saved.write_text(forward.read_text())
    forward.write_text("1\n")
    # Bridged pod-to-pod frames through iptables: where NetworkPolicy is enforced.
    if not BRIDGE_NF_CALL_IPTABLES.exists():
        _run(["modprobe", "br_netfilter"], check=False)
    if not BRIDGE_NF_CALL_IPTABLES.exists():
        raise RuntimeError(
            f"{BRIDGE_NF_CALL_IPTABLES} missing: NetworkPolicy cannot be enforced between pods "
            "on the bridge (a kernel with CONFIG_BRIDGE_NETFILTER, or `modprobe br_netfilter`)"
        )
    saved_bridge = NODE_ROOT / "bridge-nf-call-iptables.orig"
    if not saved_bridge.exists():
        saved_bridge.write_text(BRIDGE_NF_CALL_IPTABLES.read_text())
    BRIDGE_NF_CALL_IPTABLES.write_text("1\n")
    for args in guard_rules():
        _run(["iptables", "-w", *args])
    log(
        f"bridge {BRIDGE} {NODE_IP}/16 up (bridged traffic through iptables); "
        f"Services {SERVICE_CIDR} routed to it"
    )


def firewall_ready() -> bool:
    """kube-router's firewall has started: its forward chain exists."""
    proc = subprocess.run(
        ["iptables", "-w", "-S", KUBE_ROUTER_READY_CHAIN],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return proc.returncode == 0


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _program(pid: int) -> str:
    argv = _cmdline(pid)
    return Path(argv[0]).name if argv else ""


def node_processes() -> list[int]:
    """Live processes started for the node (containerd, shims, kubelet, kube-proxy)."""
    me = os.getpid()
    pids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]
    return [pid for pid in pids if pid != me and references_node(_cmdline(pid))]


def owner_of_running_node() -> str | None:
    """The cluster id of a live kubelet on this host whose API server still runs, if any.

    One real node can run per host, and starting one clears what the last left; a node
    whose control plane is alive belongs to somebody (a `make up`, a test session) and
    is refused rather than torn down. A kubelet whose API server is gone is debris.
    """
    for pid in node_processes():
        if _program(pid) != "kubelet":
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        marker = next((e for e in environ if e.startswith(f"{MARKER_ENV}=".encode())), None)
        if marker is None:
            continue
        for other in Path("/proc").iterdir():
            if not other.name.isdigit() or not alive(int(other.name)):
                continue
            if _program(int(other.name)) != "kube-apiserver":
                continue
            try:
                if marker in Path(f"/proc/{other.name}/environ").read_bytes().split(b"\0"):
                    return marker.decode().split("=", 1)[1]
            except OSError:
                continue
    return None


def _kill(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
    return pids


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith(("Z", "X"))


def kubepods_cgroups() -> list[Path]:
    """Every kubepods cgroup dir in every hierarchy, deepest first."""
    base = Path("/sys/fs/cgroup")
    found: list[Path] = []
    for top in [*base.glob("*/kubepods"), base / "kubepods"]:
        if top.is_dir():
            found.extend(p for p in top.rglob("*") if p.is_dir())
            found.append(top)
    return sorted(set(found), key=lambda p: -len(p.parts))


def pod_processes() -> list[int]:
    """Every process in the kubepods cgroups: the containers' and the pause processes."""
    pids: set[int] = set()
    for cgroup in kubepods_cgroups():
        with contextlib.suppress(OSError):
            pids.update(int(x) for x in (cgroup / "cgroup.procs").read_text().split())
    return sorted(pids)


def kill_pod_processes() -> int:
    """SIGKILL every process in the kubepods cgroups (every container, every pause)."""
    pids = pod_processes()
    _kill(pids, signal.SIGKILL)
    _wait_gone(pids, 10.0)
    return len(pids)


def remove_containers(log: Logger) -> None:
    """Delete every task and container of the CRI namespace (while containerd runs).

    The image store is kept; containers and their snapshots go, so the next node
    starts with no stale sandboxes for its kubelet to garbage-collect.
    """
    ids = ctr("containers", "list", "--quiet", check=False, timeout=60).split()
    if not ids:
        return
    ctr("tasks", "delete", "--force", *ids, check=False, timeout=120)
    ctr("containers", "delete", *ids, check=False, timeout=120)
    log(f"removed {len(ids)} container(s) from containerd")


def reset_node(*, kube_proxy: Path | None, log: Logger) -> None:
    """Remove everything a node (running, stopped or crashed) left on the host.

    Idempotent, and safe with nothing there: used by `down` and before every start.
    The order matters: the kubelet, then pods (no process may hold a mount),
    containerd's records while it still answers, then processes, mounts, network
    state, iptables, bridge.
    """
    # The kubelet first: alive, it would restart the pods killed next.
    agents = [
        p for p in node_processes() if _program(p) in ("kubelet", "kube-proxy", "kube-router")
    ]
    _kill(agents, signal.SIGTERM)
    _kill(_wait_gone(agents, 10.0), signal.SIGKILL)
    killed = kill_pod_processes()
    if killed:
        log(f"killed {killed} pod process(es)")
    if containerd_ready():
        remove_containers(log)
    leftovers = node_processes()
    _kill(leftovers, signal.SIGTERM)
    survivors = _wait_gone(leftovers, 10.0)
    _kill(survivors, signal.SIGKILL)
    _wait_gone(survivors, 5.0)
    for cgroup in kubepods_cgroups():
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    # Pod network namespaces are mounted under containerd's state dir (NODE_RUN), not
    # /run/netns, so nothing of another runtime's is ever touched here.
    roots = [KUBELET_ROOT, NODE_RUN, CONTAINERD_ROOT]
    for point in mounts_under(Path("/proc/self/mounts").read_text(), roots):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    for directory in (KUBELET_ROOT, NODE_RUN):
        shutil.rmtree(directory, ignore_errors=True)
    for directory in CNI_STATE_DIRS:
        if directory.name == "results":
            for result in directory.glob(f"{CNI_NETWORK}-*"):
                result.unlink(missing_ok=True)
        else:
            shutil.rmtree(directory, ignore_errors=True)
    for directory in KUBELET_HOST_DIRS:
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.is_symlink() or entry.is_file():
                    entry.unlink(missing_ok=True)
                else:
                    shutil.rmtree(entry, ignore_errors=True)
    if kube_proxy is not None and os.access(kube_proxy, os.X_OK):
        _run([str(kube_proxy), "--cleanup"], check=False)
    for table in ("filter", "nat", "mangle"):
        saved = _run(["iptables-save", "-t", table], check=False)
        for args in iptables_cleanup(saved):
            _run(["iptables", "-w", *args], check=False)
    if shutil.which("ipset"):
        for args in ipset_cleanup(_run(["ipset", "list", "-n"], check=False)):
            _run(["ipset", *args], check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "delete", BRIDGE], check=False)
    saved_forward = NODE_ROOT / "ip_forward.orig"
    if saved_forward.exists():
        Path("/proc/sys/net/ipv4/ip_forward").write_text(saved_forward.read_text())
        saved_forward.unlink()
    saved_bridge = NODE_ROOT / "bridge-nf-call-iptables.orig"
    if saved_bridge.exists():
        with contextlib.suppress(OSError):
            BRIDGE_NF_CALL_IPTABLES.write_text(saved_bridge.read_text())
        saved_bridge.unlink()
    reap_orphans()


def reap_orphans() -> None:
    """Reap zombie children that are not ours to wait for: orphans of the node.

    The launcher is a child subreaper (`procs.become_subreaper`), so containerd's
    shims and their leftovers re-parent to it when their parents die. Only zombies
    that reference the node's dirs are reaped, so no `Popen` loses its exit status.
    """
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            comm = stat[stat.find("(") + 1 : stat.rfind(")")]
            if comm.startswith(
                ("containerd", "runc", "pause", "kubelet", "kube-proxy", "kube-rou")
            ):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True)
class NodeCommands:
    """The argv of each node process (containerd, kubelet, kube-proxy)."""

    containerd: list[str]
    kubelet: list[str]
    kube_proxy: list[str]


def node_commands(
    *,
    bin_dir: Path,
    node_name: str,
    kubelet_kubeconfig: Path,
    kube_proxy_kubeconfig: Path,
    ca_file: Path,
    kubelet_cert: Path,
    kubelet_key: Path,
    kubelet_port: int,
    kubelet_healthz_port: int,
    kube_proxy_healthz_port: int,
    kube_proxy_metrics_port: int,
) -> NodeCommands:
    """Write the kubelet's and kube-proxy's config files; return every node argv."""
    import yaml

    # In NODE_RUN, not the cluster's work dir: a process naming a node dir is how a
    # crashed node's leftovers are recognised (`references_node`).
    NODE_RUN.mkdir(parents=True, exist_ok=True)
    kubelet_yaml = NODE_RUN / "kubelet-config.yaml"
    kubelet_yaml.write_text(
        yaml.safe_dump(
            kubelet_config(
                ca_file=ca_file,
                tls_cert=kubelet_cert,
                tls_key=kubelet_key,
                port=kubelet_port,
                healthz_port=kubelet_healthz_port,
            )
        )
    )
    proxy_yaml = NODE_RUN / "kube-proxy-config.yaml"
    proxy_yaml.write_text(
        yaml.safe_dump(
            kube_proxy_config(
                kubeconfig=kube_proxy_kubeconfig,
                node_name=node_name,
                healthz_port=kube_proxy_healthz_port,
                metrics_port=kube_proxy_metrics_port,
            )
        )
    )
    return NodeCommands(
        containerd=["containerd", "--config", str(CONTAINERD_CONFIG)],
        kubelet=[
            str(bin_dir / "kubelet"),
            f"--config={kubelet_yaml}",
            f"--kubeconfig={kubelet_kubeconfig}",
            f"--root-dir={KUBELET_ROOT}",
            f"--node-ip={NODE_IP}",
            f"--hostname-override={node_name}",
            "--v=1",
        ],
        kube_proxy=[str(bin_dir / "kube-proxy"), f"--config={proxy_yaml}", "--v=1"],
    )


def task_pid(container_id: str) -> int:
    """The host pid of a running container's process, as containerd's task list has it
    (a container ID as the pod status carries it, `containerd://` prefix or not)."""
    wanted = container_id.removeprefix("containerd://")
    for line in ctr("tasks", "ls").splitlines()[1:]:
        task, pid, *_ = line.split()
        if task == wanted:
            return int(pid)
    raise LookupError(f"no running task for container {wanted}")
