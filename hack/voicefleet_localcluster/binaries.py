"""Build the control-plane binaries from their Go modules into a versioned cache.

Nothing can be downloaded prebuilt here, so `go build` is the only source. A cold
build takes minutes on two cores, so the result is cached outside the repository
under a key derived from the pinned versions *and* a hash of the go.mod/go.sum
files: changing any pin (Kubernetes, etcd, Helm, or an indirect dependency) yields
a new cache directory instead of silently reusing stale binaries.

The install is atomic: binaries are built into a scratch directory next to the
cache and renamed into place only when all of them exist, so an interrupted build
never leaves a half-filled cache that later runs would mistake for a complete one.
A file lock serialises concurrent builders (two test sessions starting at once).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HACK_DIR = Path(__file__).resolve().parent.parent
K8S_MODULE_DIR = HACK_DIR / "k8s"
HELM_MODULE_DIR = K8S_MODULE_DIR / "helm"

ETCD_MODULE = "go.etcd.io/etcd/server/v3"
HELM_MODULE = "helm.sh/helm/v3"


@dataclass(frozen=True)
class Target:
    """One binary: the name it is installed under, its Go package, and its module dir."""

    name: str
    package: str
    module_dir: Path


TARGETS: tuple[Target, ...] = (
    Target("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", K8S_MODULE_DIR),
    Target(
        "kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager", K8S_MODULE_DIR
    ),
    Target("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler", K8S_MODULE_DIR),
    Target("kubectl", "k8s.io/kubernetes/cmd/kubectl", K8S_MODULE_DIR),
    Target("etcd", ETCD_MODULE, K8S_MODULE_DIR),
    Target("helm", "helm.sh/helm/v3/cmd/helm", HELM_MODULE_DIR),
)
BINARY_NAMES: tuple[str, ...] = tuple(t.name for t in TARGETS)


def module_version(go_mod_text: str, module: str) -> str:
    """Return the version `module` is required at in a go.mod text.

    Handles both the single-line `require m v` form and require blocks; raises
    LookupError when the module is not required, because building against an
    unknown version would make the cache key a lie.
    """
    pattern = re.compile(
        r"^\s*(?:require\s+)?" + re.escape(module) + r"\s+(v[0-9][^\s/]*)", re.MULTILINE
    )
    match = pattern.search(go_mod_text)
    if match is None:
        raise LookupError(f"{module} is not required in go.mod")
    return match.group(1)


@dataclass(frozen=True)
class Versions:
    """The pinned versions; they name the cache and stamp the binaries' --version output."""

    kubernetes: str
    etcd: str
    helm: str
    pins_digest: str

    @property
    def cache_key(self) -> str:
        return f"k8s-{self.kubernetes}-helm-{self.helm}-{self.pins_digest}"


def read_versions(k8s_dir: Path = K8S_MODULE_DIR, helm_dir: Path = HELM_MODULE_DIR) -> Versions:
    """Read the pins from the go.mod files and hash every pin file."""
    k8s_mod = (k8s_dir / "go.mod").read_text()
    helm_mod = (helm_dir / "go.mod").read_text()
    digest = hashlib.sha256()
    for path in (
        k8s_dir / "go.mod",
        k8s_dir / "go.sum",
        helm_dir / "go.mod",
        helm_dir / "go.sum",
    ):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return Versions(
        kubernetes=module_version(k8s_mod, "k8s.io/kubernetes"),
        etcd=module_version(k8s_mod, ETCD_MODULE),
        helm=module_version(helm_mod, HELM_MODULE),
        pins_digest=digest.hexdigest()[:10],
    )


def cache_root() -> Path:
    """`$VOICEFLEET_CACHE_DIR`, else `$XDG_CACHE_HOME/voicefleet`, else ~/.cache/voicefleet."""
    explicit = os.environ.get("VOICEFLEET_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "voicefleet"


def bin_dir(versions: Versions | None = None) -> Path:
    """Where the binaries for these pins live (whether or not they are built yet)."""
    v = versions or read_versions()
    return cache_root() / v.cache_key / "bin"


def is_complete(directory: Path) -> bool:
    """True when every binary is present and executable."""
    return all(os.access(directory / name, os.X_OK) for name in BINARY_NAMES)


def ldflags(target: Target, versions: Versions) -> str:
    """Linker flags: strip symbols and stamp the release version.

    Without the stamp, kube-apiserver reports `v0.0.0-master`, which breaks
    version-skew checks in kubectl and `kubeVersion` constraints in Helm charts.
    """
    flags = ["-s", "-w"]
    if target.module_dir == K8S_MODULE_DIR and target.name != "etcd":
        major, minor = versions.kubernetes.lstrip("v").split(".")[:2]
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {pkg}.gitVersion={versions.kubernetes}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
            ]
    if target.name == "helm":
        flags.append(f"-X helm.sh/helm/v3/internal/version.version={versions.helm}")
    return " ".join(flags)


def find_go() -> str:
    """Locate the Go toolchain (PATH first, then the conventional install dir)."""
    found = shutil.which("go")
    if found:
        return found
    for candidate in ("/usr/local/go/bin/go", str(Path.home() / "go/bin/go")):
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("the Go toolchain is needed to build the local cluster; install Go")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _default_log(line: str) -> None:
    print(f"[voicefleet-cluster] {line}", file=sys.stderr, flush=True)


def ensure_binaries(log: Callable[[str], None] = _default_log) -> Path:
    """Return the bin dir, building whatever is missing first (idempotent, atomic, locked)."""
    versions = read_versions()
    target_dir = bin_dir(versions)
    if is_complete(target_dir):
        log(f"binaries cached in {target_dir}")
        return target_dir
    with _locked(target_dir.parent / "build.lock"):
        if is_complete(target_dir):  # another process finished while we waited
            log(f"binaries cached in {target_dir}")
            return target_dir
        _build_into(target_dir, versions, log)
    return target_dir


def _build_into(target_dir: Path, versions: Versions, log: Callable[[str], None]) -> None:
    go = find_go()
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bin.partial-", dir=target_dir.parent))
    log(
        f"building Kubernetes {versions.kubernetes}, etcd {versions.etcd}, Helm {versions.helm} "
        f"from Go modules into {target_dir} (first run: several minutes on 2 cores)"
    )
    started = time.monotonic()
    try:
        for index, target in enumerate(TARGETS, start=1):
            t0 = time.monotonic()
            log(f"[{index}/{len(TARGETS)}] go build {target.package}")
            out_dir = scratch / f".{target.name}"
            out_dir.mkdir()
            cmd = [
                go,
                "build",
                "-buildvcs=false",
                "-ldflags",
                ldflags(target, versions),
                "-o",
                f"{out_dir}/",
                target.package,
            ]
            proc = subprocess.run(
                cmd, cwd=target.module_dir, capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise RuntimeError(
                    f"go build {target.package} failed (exit {proc.returncode}):\n"
                    f"{proc.stderr[-4000:]}"
                )
            produced = [p for p in out_dir.iterdir() if p.is_file()]
            if len(produced) != 1:
                raise RuntimeError(f"go build {target.package} produced {produced}")
            produced[0].rename(scratch / target.name)
            out_dir.rmdir()
            log(f"[{index}/{len(TARGETS)}] {target.name} built in {time.monotonic() - t0:.0f}s")
        if target_dir.exists():  # a stale, incomplete dir from an older layout
            shutil.rmtree(target_dir)
        scratch.chmod(0o755)  # mkdtemp makes it private; the binaries are not secret
        scratch.rename(target_dir)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    log(f"all binaries built in {time.monotonic() - started:.0f}s -> {target_dir}")
