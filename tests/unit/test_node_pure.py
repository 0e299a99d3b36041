"""The real node's pure parts: preflight verdicts, configs, cleanup plans, build stamps.

The host is a fake only at our own seam (`preflight.Host`); everything else here is
a pure function of its input.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest

from voicefleet_localcluster import binaries, node, preflight

GOOD_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
"""
FILESYSTEMS = "nodev\tsysfs\nnodev\ttmpfs\nnodev\toverlay\n"


def fake_host(
    *,
    euid: int = 0,
    filesystems: str = FILESYSTEMS,
    missing: frozenset[str] = frozenset(),
    mounts: str = GOOD_MOUNTS,
) -> preflight.Host:
    """A machine that has everything except the programs and paths named in `missing`."""
    return preflight.Host(
        euid=euid,
        filesystems=filesystems,
        which=lambda name: None if name in missing else f"/usr/bin/{name}",
        exists=lambda path: path.name not in missing,
        cgroup_mounts=mounts,
    )


def test_preflight_passes_on_a_capable_machine() -> None:
    assert preflight.problems(fake_host()) == []
    preflight.check(fake_host())


def test_preflight_names_each_missing_piece_and_its_fix() -> None:
    host = fake_host(
        euid=1000,
        filesystems="nodev\tsysfs\n",
        missing=frozenset({"runc", "bridge", "busybox"}),
    )
    found = preflight.problems(host)
    text = "\n".join(found)
    assert "not root" in text
    assert "sudo" in text
    assert "no overlayfs" in text
    assert "modprobe overlay" in text
    assert "runc missing (Debian package runc)" in text
    assert "CNI plugins bridge missing" in text
    assert "containernetworking-plugins" in text
    assert "busybox-static" in text
    assert len(found) == 5
    with pytest.raises(preflight.PreflightError, match="cannot run the local cluster's node"):
        preflight.check(host)


def test_preflight_cgroups_unusable() -> None:
    no_memory = GOOD_MOUNTS.replace("memory", "blkio")
    assert any("memory" in p for p in preflight.cgroup_problems(no_memory))
    read_only = "cgroup2 /sys/fs/cgroup cgroup2 ro,nosuid 0 0\n"
    assert any("read-only" in p for p in preflight.cgroup_problems(read_only))
    assert preflight.cgroup_problems("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n") == []


def test_ranges_stay_in_the_benchmarking_block() -> None:
    block = ipaddress.ip_network("198.18.0.0/15")
    pods = ipaddress.ip_network(node.POD_CIDR)
    services = ipaddress.ip_network(node.SERVICE_CIDR)
    assert pods.subnet_of(block)
    assert services.subnet_of(block)
    assert not pods.overlaps(services)
    assert services.num_addresses >= 65536  # thousands of Services (issue 23)
    assert ipaddress.ip_address(node.NODE_IP) in pods
    assert ipaddress.ip_address(node.DNS_SERVICE_IP) in services
    assert ipaddress.ip_address(node.KUBERNETES_SERVICE_IP) == services[1]


def test_cni_config_has_no_default_route_and_no_masquerade() -> None:
    config = node.cni_config()
    bridge = config["plugins"][0]
    assert bridge["type"] == "bridge"
    assert bridge["isGateway"]
    assert bridge["hairpinMode"]
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["routes"] == [{"dst": node.SERVICE_CIDR}]
    assert [p["type"] for p in config["plugins"]] == ["bridge", "portmap"]
    json.dumps(config)


def test_containerd_config_sets_what_this_machine_kind_needs() -> None:
    parsed = tomllib.loads(node.containerd_config(sandbox_image="localhost/x/pause:1"))
    cri = parsed["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["restrict_oom_score_adj"] is True
    assert cri["disable_apparmor"] is True
    assert cri["sandbox_image"] == "localhost/x/pause:1"
    assert cri["containerd"]["snapshotter"] == "overlayfs"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert parsed["grpc"]["address"] == str(node.containerd_socket())
    assert cri["netns_mounts_under_state_dir"] is True


def test_kubelet_config() -> None:
    config = node.kubelet_config(
        ca_file=Path("/ca"), tls_cert=Path("/c"), tls_key=Path("/k"), port=1, healthz_port=2
    )
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failSwapOn"] is False
    assert config["failCgroupV1"] is False
    assert config["clusterDNS"] == [node.DNS_SERVICE_IP]
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["imageGCHighThresholdPercent"] == 100  # no registry to pull back from


def test_guard_rejects_pod_traffic_outside_our_range() -> None:
    rules = node.guard_rules()
    assert ["-A", node.GUARD_CHAIN, "-s", node.POD_CIDR, "-d", node.OWN_RANGE, "-j", "RETURN"] in (
        rules
    )
    assert rules[-1] == ["-I", "FORWARD", "1", "-j", node.GUARD_CHAIN]


SAVE = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:KUBE-FIREWALL - [0:0]
:VOICEFLEET-NODE - [0:0]
-A INPUT -j KUBE-FIREWALL
-A FORWARD -j VOICEFLEET-NODE
-A FORWARD -j DOCKER-USER
-A OUTPUT -m comment --comment "kube fw" -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -j DROP
COMMIT
"""


def test_iptables_cleanup_removes_only_our_chains_and_jumps() -> None:
    plan = node.iptables_cleanup(SAVE)
    assert plan == [
        ["-t", "filter", "-D", "INPUT", "-j", "KUBE-FIREWALL"],
        ["-t", "filter", "-D", "FORWARD", "-j", "VOICEFLEET-NODE"],
        ["-t", "filter", "-D", "OUTPUT", "-m", "comment", "--comment", "kube fw", "-j",
         "KUBE-FIREWALL"],
        ["-t", "filter", "-F", "KUBE-FIREWALL"],
        ["-t", "filter", "-F", "VOICEFLEET-NODE"],
        ["-t", "filter", "-X", "KUBE-FIREWALL"],
        ["-t", "filter", "-X", "VOICEFLEET-NODE"],
    ]  # fmt: skip
    assert not any("DOCKER-USER" in part for args in plan for part in args)


def test_mounts_under_deepest_first_and_nothing_else() -> None:
    mounts = (
        "overlay /run/voicefleet-node/containerd/t/rootfs overlay rw 0 0\n"
        "/dev/vda /var/lib/voicefleet-node/kubelet ext4 rw 0 0\n"
        "tmpfs /var/lib/voicefleet-node/kubelet/pods/u/volumes/x tmpfs rw 0 0\n"
        "/dev/vda /var/lib/voicefleet-node-other ext4 rw 0 0\n"
        "proc /proc proc rw 0 0\n"
    )
    found = node.mounts_under(mounts, [node.KUBELET_ROOT, node.NODE_RUN])
    assert found == [
        "/var/lib/voicefleet-node/kubelet/pods/u/volumes/x",
        "/run/voicefleet-node/containerd/t/rootfs",
        "/var/lib/voicefleet-node/kubelet",
    ]


def test_node_processes_are_recognised_by_the_node_dirs_they_name() -> None:
    assert node.references_node(["containerd", "--config", str(node.CONTAINERD_CONFIG)])
    assert node.references_node(
        ["containerd-shim-runc-v2", "-address", str(node.CONTAINERD_SOCKET)]
    )
    assert not node.references_node(["containerd", "--config", "/etc/containerd/config.toml"])


def test_helm_is_stamped_with_the_kubernetes_version_it_links() -> None:
    """Without the stamp Helm assumes Kubernetes 1.20 and the chart (>=1.30) fails."""
    assert binaries.helm_kube_version("v0.34.2") == ("1", "34")
    versions = binaries.read_versions()
    helm = next(t for t in binaries.TARGETS if t.name == "helm")
    flags = binaries.ldflags(helm, versions)
    _, minor = binaries.helm_kube_version(versions.helm_client_go)
    for pkg in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        assert f"-X {pkg}.k8sVersionMajor=1" in flags
        assert f"-X {pkg}.k8sVersionMinor={minor}" in flags


def test_cache_key_covers_link_flags_and_the_node_binaries() -> None:
    versions = binaries.read_versions()
    names = set(binaries.BINARY_NAMES)
    assert {"kubelet", "kube-proxy", "coredns"} <= names
    coredns = next(t for t in binaries.TARGETS if t.name == "coredns")
    assert coredns.static
    assert coredns.module_dir == binaries.COREDNS_MODULE_DIR
    other = binaries.Versions(
        kubernetes=versions.kubernetes,
        etcd=versions.etcd,
        helm=versions.helm,
        pins_digest=versions.pins_digest,
        helm_client_go="v0.33.0",  # a different stamp from the same pins
        coredns=versions.coredns,
    )
    assert other.cache_key != versions.cache_key


# -- kube-router: the node's NetworkPolicy firewall -------------------------------------------

ROUTER_SAVE = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:KUBE-ROUTER-FORWARD - [0:0]
:KUBE-POD-FW-ABCDEF - [0:0]
:KUBE-NWPLCY-XYZ - [0:0]
-A FORWARD -m comment --comment "kube-router netpol" -j KUBE-ROUTER-FORWARD
-A KUBE-ROUTER-FORWARD -d 198.18.0.7/32 -m physdev --physdev-is-bridged -j KUBE-POD-FW-ABCDEF
-A KUBE-POD-FW-ABCDEF -m set --match-set KUBE-SRC-ABC src -j KUBE-NWPLCY-XYZ
COMMIT
"""


def test_teardown_removes_kube_routers_chains_then_its_ipsets_only() -> None:
    plan = node.iptables_cleanup(ROUTER_SAVE)
    assert plan[0] == [
        "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "kube-router netpol",
        "-j", "KUBE-ROUTER-FORWARD",
    ]  # fmt: skip
    for chain in ("KUBE-ROUTER-FORWARD", "KUBE-POD-FW-ABCDEF", "KUBE-NWPLCY-XYZ"):
        assert ["-t", "filter", "-X", chain] in plan
    names = "KUBE-SRC-ABC\nKUBE-DST-DEF\nTMP-QWERTY\ninet6:KUBE-SRC-X\nweave-allowed\nf2b-sshd\n"
    assert node.ipset_cleanup(names) == [
        ["destroy", "KUBE-SRC-ABC"],
        ["destroy", "KUBE-DST-DEF"],
        ["destroy", "TMP-QWERTY"],
        ["destroy", "inet6:KUBE-SRC-X"],
    ]
    assert node.ipset_cleanup("") == []


def test_kube_router_runs_the_firewall_only_as_its_own_reader() -> None:
    argv = node.kube_router_command(
        Path("/cache/kube-router"), kubeconfig=node.KUBE_ROUTER_KUBECONFIG, node_name="n1",
        health_port=4321,
    )  # fmt: skip
    assert argv[0] == "/cache/kube-router"
    for flag in (
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--hostname-override=n1",
        f"--service-cluster-ip-range={node.SERVICE_CIDR}",
        "--health-port=4321",
    ):
        assert flag in argv
    # found again by a later reset even if its session crashed: it names a node dir
    assert node.references_node(argv)
    role, binding = node.kube_router_rbac()
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}
    assert verbs == {"get", "list", "watch"}
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert {"pods", "namespaces", "networkpolicies"} <= resources
    assert "secrets" not in resources
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": node.KUBE_ROUTER_USER}
    ]


def test_kube_router_pin_names_its_cache() -> None:
    release, digest = binaries.kube_router_versions()
    assert release.startswith("v2.")
    path = binaries.kube_router_path()
    assert path.name == "kube-router"
    assert path.parent.parent.name == f"kube-router-{release}-{digest}"
    assert path.parent.parent.parent == binaries.cache_root()
