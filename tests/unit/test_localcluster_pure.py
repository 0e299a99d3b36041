"""Pure parts of the local cluster: build pins, PKI text, kubeconfig, waiting."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import yaml

from voicefleet_localcluster import binaries, pki
from voicefleet_localcluster.kubeconfig import KubeConfig, load
from voicefleet_localcluster.testing import WaitTimeout, wait_for


def test_module_versions_are_read_from_go_mod() -> None:
    text = (
        "module x\n\nrequire k8s.io/kubernetes v1.34.4\n\n"
        "require (\n\tgo.etcd.io/etcd/server/v3 v3.6.4 // indirect\n)\n"
    )
    assert binaries.module_version(text, "k8s.io/kubernetes") == "v1.34.4"
    assert binaries.module_version(text, "go.etcd.io/etcd/server/v3") == "v3.6.4"
    with pytest.raises(LookupError):
        binaries.module_version(text, "helm.sh/helm/v3")


def test_repository_pins_and_cache_key() -> None:
    versions = binaries.read_versions()
    assert versions.kubernetes.startswith("v1.3")
    assert versions.etcd.startswith("v3.")
    assert versions.helm.startswith("v3.")
    assert versions.cache_key.startswith(f"k8s-{versions.kubernetes}-helm-{versions.helm}-")
    kube = next(t for t in binaries.TARGETS if "kube-apiserver" in t.links)
    assert f"version.gitVersion={versions.kubernetes}" in binaries.ldflags(kube, versions)


def test_one_program_serves_the_six_kubernetes_components_by_name() -> None:
    """One link for six components; each name is a hard link the cache must hold."""
    kube = next(t for t in binaries.TARGETS if t.package == binaries.KUBE_PACKAGE)
    components = {"kube-apiserver", "kube-controller-manager", "kube-scheduler"}
    components |= {"kubectl", "kubelet", "kube-proxy"}
    assert set(kube.links) == components
    assert components | {"kube", "etcd", "helm", "coredns"} == set(binaries.BINARY_NAMES)
    main = (binaries.K8S_MODULE_DIR / "kube" / "main.go").read_text()
    for name in components:
        assert f'"{name}"' in main  # each name dispatches to its component


def test_certificate_subjects_and_extensions() -> None:
    assert pki.subject("system:node:n", ["system:nodes"]) == "/O=system:nodes/CN=system:node:n"
    with pytest.raises(ValueError, match="unsupported"):
        pki.subject("a/b")
    ext = pki.leaf_extensions(server=True, client=False, dns_names=["localhost"], ips=["127.0.0.1"])
    assert "extendedKeyUsage = serverAuth\n" in ext
    assert "subjectAltName = DNS:localhost,IP:127.0.0.1" in ext


def test_kubeconfig_round_trip(tmp_path: Path) -> None:
    config = KubeConfig(server="https://127.0.0.1:1", ca_pem=b"ca", cert_pem=b"c", key_pem=b"k")
    path = config.write(tmp_path / "kc")
    assert path.stat().st_mode & 0o777 == 0o600
    assert load(path) == config


def test_wait_for_returns_the_value_or_times_out() -> None:
    calls = iter([None, 0, "done"])
    assert wait_for(lambda: next(calls), timeout=5, interval=0.001) == "done"
    with pytest.raises(WaitTimeout, match=r"never.*ZeroDivisionError"):
        wait_for(lambda: 1 / 0 == 0, timeout=0.05, interval=0.01, what="never")


def test_go_version_parsing() -> None:
    assert binaries.go_version("go version go1.26.8 linux/amd64") == (1, 26)
    assert binaries.go_version("go version go1.9 linux/amd64") == (1, 9)
    assert binaries.go_version("bash: go: not found") is None


def test_zip_h1_matches_go_sum_hashing(tmp_path: Path) -> None:
    """dirhash.Hash1 over the zip's entries (checked once against a real go.sum line)."""
    archive = tmp_path / "m.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("m@v1/go.mod", "module m\n")
        zipped.writestr("m@v1/a.go", "package m\n")
    assert binaries.zip_h1(archive) == "h1:H1N7vbG0aKow6Pg3vW8mqcv6r6Qo9oWn9TF7mlIYrpc="


def test_seaweedfs_build_leaves_out_only_blank_imports_of_optional_backends() -> None:
    source = (
        "package weed_server\n\nimport (\n"
        '\t"github.com/seaweedfs/seaweedfs/weed/filer"\n'
        '\t_ "github.com/seaweedfs/seaweedfs/weed/filer/leveldb2"\n'
        '\t_ "github.com/seaweedfs/seaweedfs/weed/filer/mongodb"\n'
        '\t_ "github.com/seaweedfs/seaweedfs/weed/notification/kafka"\n'
        '\t_ "net/http/pprof"\n'
        ")\n"
    )
    trimmed, dropped = binaries.trim_blank_imports(source)
    assert dropped == ["weed/filer/mongodb", "weed/notification/kafka"]
    assert trimmed == source.replace(
        '\t_ "github.com/seaweedfs/seaweedfs/weed/filer/mongodb"\n', ""
    ).replace('\t_ "github.com/seaweedfs/seaweedfs/weed/notification/kafka"\n', "")


def test_seaweedfs_pin_names_its_cache() -> None:
    commit, digest = binaries.seaweedfs_versions()
    assert commit == "7506e5f9"
    assert len(digest) == 10
    path = binaries.seaweedfs_path()
    assert path.name == "weed"
    assert path.parent.parent.name == f"seaweedfs-{commit}-{digest}"
    assert path.parent.parent.parent == binaries.cache_root()


def test_kwok_pin_names_its_cache_and_its_stages_are_ours() -> None:
    """kwok (the fleet benchmark's fake nodes) builds into its own cache dir, and runs only
    the stages of hack/k8s/kwok/stages.yaml: nodes Ready and heartbeating, pods Running
    with an IP (kept when Ready comes back), deleted pods gone."""
    release, digest = binaries.kwok_versions()
    assert release == "v0.8.0"
    path = binaries.kwok_path()
    assert path.name == "kwok"
    assert path.parent.parent.name == f"kwok-{release}-{digest}"
    assert path.parent.parent.parent == binaries.cache_root()
    stages = [s for s in yaml.safe_load_all(binaries.KWOK_STAGES.read_text()) if s]
    kinds = {s["metadata"]["name"]: s["spec"]["resourceRef"]["kind"] for s in stages}
    assert kinds == {
        "fleet-node-ready": "Node",
        "fleet-node-heartbeat": "Node",
        "fleet-pod-running": "Pod",
        "fleet-pod-gone": "Pod",
    }
    running = next(s for s in stages if s["metadata"]["name"] == "fleet-pod-running")
    assert "{{ $ip := .status.podIP }}" in running["spec"]["next"]["statusTemplate"]
    gone = next(s for s in stages if s["metadata"]["name"] == "fleet-pod-gone")
    assert gone["spec"]["next"] == {"delete": True}
