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

import base64
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

HACK_DIR = Path(__file__).resolve().parent.parent
K8S_MODULE_DIR = HACK_DIR / "k8s"
HELM_MODULE_DIR = K8S_MODULE_DIR / "helm"
COREDNS_MODULE_DIR = K8S_MODULE_DIR / "coredns"
PROMTOOL_MODULE_DIR = K8S_MODULE_DIR / "promtool"
KUBE_ROUTER_MODULE_DIR = K8S_MODULE_DIR / "kube-router"

ETCD_MODULE = "go.etcd.io/etcd/server/v3"
HELM_MODULE = "helm.sh/helm/v3"
COREDNS_MODULE = "github.com/coredns/coredns"
# Our own main (hack/k8s/coredns/main.go): CoreDNS with the cluster-DNS plugins only.
COREDNS_PACKAGE = "voicefleet.io/hack/k8s/coredns"
CLIENT_GO_MODULE = "k8s.io/client-go"
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMTOOL_PACKAGE = "github.com/prometheus/prometheus/cmd/promtool"
KUBE_ROUTER_MODULE = "github.com/cloudnativelabs/kube-router/v2"
# Our own main (hack/k8s/kube-router/main.go): kube-router's network policy controller alone.
KUBE_ROUTER_PACKAGE = "voicefleet.io/hack/k8s/kube-router"


@dataclass(frozen=True)
class Target:
    """One Go program: the name it is installed under, its package, its module dir.

    `static` builds with CGO_ENABLED=0 (CoreDNS runs from a one-file image with no libc);
    `tags` are Go build tags; `links` are further names for the same file (hard links),
    for a program that acts by the name it is started under.
    """

    name: str
    package: str
    module_dir: Path
    static: bool = False
    tags: str = ""
    links: tuple[str, ...] = ()


# Our own main (hack/k8s/kube/main.go): the six Kubernetes components in one program, so
# that a cold build links once instead of six times.
KUBE_PACKAGE = "voicefleet.io/hack/k8s/kube"
KUBE_COMPONENTS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    # The real node: same Kubernetes pin and version stamp as the control plane.
    "kubelet",
    "kube-proxy",
)

TARGETS: tuple[Target, ...] = (
    Target("kube", KUBE_PACKAGE, K8S_MODULE_DIR, links=KUBE_COMPONENTS),
    Target("etcd", ETCD_MODULE, K8S_MODULE_DIR),
    Target("helm", "helm.sh/helm/v3/cmd/helm", HELM_MODULE_DIR),
    Target("coredns", COREDNS_PACKAGE, COREDNS_MODULE_DIR, static=True),
)
BINARY_NAMES: tuple[str, ...] = tuple(name for t in TARGETS for name in (t.name, *t.links))


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
    helm_client_go: str = "v0.0.0"
    coredns: str = "v0.0.0"

    @property
    def cache_key(self) -> str:
        return f"k8s-{self.kubernetes}-helm-{self.helm}-{self.recipe_digest}"

    @property
    def recipe_digest(self) -> str:
        """The pins' digest extended with every target's recipe: package, cgo, tags, flags.

        A change to how a binary is built or stamped (the Helm Kubernetes-version fix,
        CoreDNS's own main) changes the bytes built from the same pins, so it must name
        a new cache dir too.
        """
        digest = hashlib.sha256(self.pins_digest.encode())
        for t in TARGETS:
            recipe = f"{t.name} {t.package} {t.static} {t.tags} {t.links} {ldflags(t, self)}"
            digest.update(f"{recipe}\n".encode())
        return digest.hexdigest()[:10]


def read_versions(
    k8s_dir: Path = K8S_MODULE_DIR,
    helm_dir: Path = HELM_MODULE_DIR,
    coredns_dir: Path = COREDNS_MODULE_DIR,
) -> Versions:
    """Read the pins from the go.mod files and hash every pin file and CoreDNS's main."""
    k8s_mod = (k8s_dir / "go.mod").read_text()
    helm_mod = (helm_dir / "go.mod").read_text()
    coredns_mod = (coredns_dir / "go.mod").read_text()
    digest = hashlib.sha256()
    for path in (
        k8s_dir / "go.mod",
        k8s_dir / "go.sum",
        helm_dir / "go.mod",
        helm_dir / "go.sum",
        *module_sources(coredns_dir),
    ):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return Versions(
        kubernetes=module_version(k8s_mod, "k8s.io/kubernetes"),
        etcd=module_version(k8s_mod, ETCD_MODULE),
        helm=module_version(helm_mod, HELM_MODULE),
        pins_digest=digest.hexdigest()[:10],
        helm_client_go=module_version(helm_mod, CLIENT_GO_MODULE),
        coredns=module_version(coredns_mod, COREDNS_MODULE),
    )


def helm_kube_version(client_go: str) -> tuple[str, str]:
    """The Kubernetes (major, minor) Helm assumes when no cluster is asked.

    Helm's Makefile derives it from the k8s.io/client-go it links (v0.34.x ->
    1.34) and stamps it into pkg/chartutil and pkg/lint/rules; a plain `go build`
    leaves the source default (1.20), so `helm template` of a chart with
    `kubeVersion: ">=1.30"` fails without `--kube-version`.
    """
    match = re.fullmatch(r"v0\.(\d+)\.\d+.*", client_go)
    if match is None:
        raise ValueError(f"unexpected k8s.io/client-go version {client_go!r}")
    return "1", match.group(1)


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
        major, minor = helm_kube_version(versions.helm_client_go)
        for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
            flags += [f"-X {pkg}.k8sVersionMajor={major}", f"-X {pkg}.k8sVersionMinor={minor}"]
    return " ".join(flags)


MIN_GO = (1, 25)  # hack/k8s/coredns/go.mod says go 1.25
# Fallback toolchain when no Go >= MIN_GO is installed: the `golang.org/toolchain`
# module from the Go module proxy (what `GOTOOLCHAIN` switching downloads), pinned by
# its go.sum-style h1 hash, computed from the proxy's zip when this pin was added.
BOOTSTRAP_GO = "1.25.5"
BOOTSTRAP_GO_H1 = {"linux-amd64": "h1:IkknVKy/4hLMR+ZwWfP4Oqhjz2sKqNtEXz1meP8P3Nc="}
GOPROXY_URL = "https://proxy.golang.org"


def go_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `go version` output, e.g. 'go version go1.26.8 linux/amd64'."""
    match = re.search(r"\bgo(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def zip_h1(path: Path) -> str:
    """The `h1:` hash Go records in go.sum for a module zip (dirhash.Hash1)."""
    summary = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            digest = hashlib.sha256(archive.read(name)).hexdigest()
            summary.update(f"{digest}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def _installed_go() -> str | None:
    candidates = [shutil.which("go"), "/usr/local/go/bin/go", str(Path.home() / "go/bin/go")]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        proc = subprocess.run(
            [candidate, "version"],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "GOTOOLCHAIN": "local"},
        )
        version = go_version(proc.stdout)
        if version is not None and version >= MIN_GO:
            return candidate
    return None


def find_go(log: Callable[[str], None] = lambda line: None) -> str:
    """An installed Go >= MIN_GO, else the pinned toolchain fetched from the module proxy."""
    installed = _installed_go()
    if installed:
        return installed
    platform_key = f"linux-{_goarch()}"
    expected = BOOTSTRAP_GO_H1.get(platform_key)
    if expected is None:
        raise FileNotFoundError(
            f"Go >= {MIN_GO[0]}.{MIN_GO[1]} is needed to build the local cluster; install it"
        )
    root = cache_root() / f"go{BOOTSTRAP_GO}.{platform_key}"
    go = root / "bin" / "go"
    if os.access(go, os.X_OK):
        return str(go)
    version = f"v0.0.1-go{BOOTSTRAP_GO}.{platform_key}"
    url = f"{GOPROXY_URL}/golang.org/toolchain/@v/{version}.zip"
    log(f"no Go >= {MIN_GO[0]}.{MIN_GO[1]} installed; fetching go{BOOTSTRAP_GO} from {url}")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        archive = Path(tmp) / "toolchain.zip"
        with httpx.stream("GET", url, timeout=300, follow_redirects=True) as response:
            response.raise_for_status()
            with archive.open("wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
        actual = zip_h1(archive)
        if actual != expected:
            raise RuntimeError(f"go toolchain hash mismatch: {actual} != pinned {expected}")
        prefix = f"golang.org/toolchain@{version}/"
        unpacked = Path(tmp) / "go"
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                target = unpacked / info.filename.removeprefix(prefix)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zipped.read(info))
        # Module zips carry no file modes; the toolchain's programs must be executable.
        for executable in [*unpacked.glob("bin/*"), *unpacked.glob("pkg/tool/*/*")]:
            executable.chmod(0o755)
        unpacked.rename(root)
    return str(go)


def _goarch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def go_build(go: str, target: Target, flags: str, out: Path) -> None:
    """`go build` one target into the file `out`; RuntimeError with go's stderr if it fails.

    Every Go program here is built by this one function: the cluster's binaries and the
    tools built on first use (promtool, kube-router).
    """
    argv = [go, "build", "-buildvcs=false", *(["-tags", target.tags] if target.tags else [])]
    env = {**os.environ, "GOTOOLCHAIN": "local"}
    if target.static:
        env["CGO_ENABLED"] = "0"
    proc = subprocess.run(
        [*argv, "-ldflags", flags, "-o", str(out), target.package],
        cwd=target.module_dir,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        out.unlink(missing_ok=True)
        raise RuntimeError(
            f"go build {target.package} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    if not os.access(out, os.X_OK):
        raise RuntimeError(f"go build {target.package} left no program at {out}")


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block: one
    build per cache at a time, across processes (two test sessions may both need it)."""
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
    with locked(target_dir.parent / "build.lock"):
        if is_complete(target_dir):  # another process finished while we waited
            log(f"binaries cached in {target_dir}")
            return target_dir
        _build_into(target_dir, versions, log)
    return target_dir


def _build_into(target_dir: Path, versions: Versions, log: Callable[[str], None]) -> None:
    go = find_go(log)
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bin.partial-", dir=target_dir.parent))
    log(
        f"building Kubernetes {versions.kubernetes}, etcd {versions.etcd}, Helm {versions.helm}, "
        f"CoreDNS {versions.coredns} from Go modules into {target_dir} "
        "(first run: several minutes on 2 cores)"
    )
    started = time.monotonic()
    try:
        for index, target in enumerate(TARGETS, start=1):
            t0 = time.monotonic()
            log(f"[{index}/{len(TARGETS)}] go build {target.package}")
            go_build(go, target, ldflags(target, versions), scratch / target.name)
            for link in target.links:
                os.link(scratch / target.name, scratch / link)
            log(f"[{index}/{len(TARGETS)}] {target.name} built in {time.monotonic() - t0:.0f}s")
        if target_dir.exists():  # a stale, incomplete dir from an older layout
            shutil.rmtree(target_dir)
        scratch.chmod(0o755)  # mkdtemp makes it private; the binaries are not secret
        scratch.rename(target_dir)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    log(f"all binaries built in {time.monotonic() - started:.0f}s -> {target_dir}")


# -- promtool -------------------------------------------------------------------------------
# Only the chart's alert-rule tests need it, so it is built on first use, from its own
# module dir and into its own cache dir: a Prometheus pin never invalidates the
# Kubernetes binaries (whose build is the slow one) and vice versa.


def module_sources(module_dir: Path) -> list[Path]:
    """A module dir's go.mod, go.sum and its own Go files (our mains), tests left out."""
    own = sorted(p for p in module_dir.glob("*.go") if not p.name.endswith("_test.go"))
    return [module_dir / "go.mod", module_dir / "go.sum", *own]


def _pin_digest(module_dir: Path) -> str:
    """Digest of a tool module's pins and own sources: any change names a new cache dir."""
    digest = hashlib.sha256()
    for path in module_sources(module_dir):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def promtool_versions(module_dir: Path = PROMTOOL_MODULE_DIR) -> tuple[str, str]:
    """(Prometheus release, digest of the pin files) for the promtool cache key.

    Prometheus v3.X.Y is published as Go module version v0.3XX.Y; the release name
    is what `promtool --version` should print.
    """
    mod = (module_dir / "go.mod").read_text()
    module = module_version(mod, PROMETHEUS_MODULE)
    match = re.fullmatch(r"v0\.(\d)(\d\d)\.(\d+)", module)
    release = f"v{match.group(1)}.{int(match.group(2))}.{match.group(3)}" if match else module
    return release, _pin_digest(module_dir)


def promtool_path(module_dir: Path = PROMTOOL_MODULE_DIR) -> Path:
    """Where promtool for this pin lives (whether or not it is built yet)."""
    release, digest = promtool_versions(module_dir)
    return cache_root() / f"promtool-{release}-{digest}" / "bin" / "promtool"


@dataclass(frozen=True)
class GoTool:
    """A tool built on first use from its own pinned module dir into its own cache dir."""

    target: Target
    release: str
    path: Path
    ldflags: str


def _ensure_tool(tool: GoTool, log: Callable[[str], None]) -> Path:
    """Return the tool's binary, building it first when missing (atomic, locked)."""
    path, name = tool.path, tool.target.name
    if os.access(path, os.X_OK):
        return path
    with locked(path.parent.parent / "build.lock"):
        if os.access(path, os.X_OK):
            return path
        go = find_go(log)
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"building {name} {tool.release} from its Go module (first run: minutes)")
        started = time.monotonic()
        partial = path.with_name(f".{name}.partial-{os.getpid()}")
        go_build(go, tool.target, tool.ldflags, partial)
        partial.rename(path)
        log(f"{name} built in {time.monotonic() - started:.0f}s -> {path}")
    return path


def ensure_promtool(log: Callable[[str], None] = _default_log) -> Path:
    """Return the promtool binary, building it first when missing (atomic, locked)."""
    release, _ = promtool_versions()
    return _ensure_tool(
        GoTool(
            # Prometheus's own build tag: leave out the cloud service-discovery plugins
            # (AWS, Azure, GCE …), most of the build, which rule tests never use.
            Target("promtool", PROMTOOL_PACKAGE, PROMTOOL_MODULE_DIR, tags="remove_all_sd"),
            release=release,
            path=promtool_path(),
            ldflags=f"-s -w -X github.com/prometheus/common/version.Version={release.lstrip('v')}",
        ),
        log,
    )


# -- kube-router ------------------------------------------------------------------------------
# The real node's NetworkPolicy enforcement (its firewall controller only: iptables + ipset;
# node.py runs it). Its own module and cache dir, like promtool's.


def kube_router_versions(module_dir: Path = KUBE_ROUTER_MODULE_DIR) -> tuple[str, str]:
    """(kube-router release, digest of the pin files) for the kube-router cache key."""
    release = module_version((module_dir / "go.mod").read_text(), KUBE_ROUTER_MODULE)
    return release, _pin_digest(module_dir)


def kube_router_path(module_dir: Path = KUBE_ROUTER_MODULE_DIR) -> Path:
    """Where kube-router for this pin lives (whether or not it is built yet)."""
    release, digest = kube_router_versions(module_dir)
    return cache_root() / f"kube-router-{release}-{digest}" / "bin" / "kube-router"


def ensure_kube_router(log: Callable[[str], None] = _default_log) -> Path:
    """Return the kube-router binary, building it first when missing (atomic, locked)."""
    release, _ = kube_router_versions()
    return _ensure_tool(
        GoTool(
            Target("kube-router", KUBE_ROUTER_PACKAGE, KUBE_ROUTER_MODULE_DIR),
            release=release,
            path=kube_router_path(),
            # what `kube-router --version` prints
            ldflags=f"-s -w -X {KUBE_ROUTER_MODULE}/pkg/version.Version={release}",
        ),
        log,
    )


# -- SeaweedFS --------------------------------------------------------------------------------
# The S3-compatible server the url-model tests fetch from (its gateway checks SigV4
# signatures). Its own module and cache dir, like promtool's. `weed` registers its optional
# backends by blank imports; the gateway over the filer's default leveldb2 store needs none
# of the database filer stores, notification queues, cloud KMS providers or replication
# sinks, which are a large share of a build. So the module's source is copied next to the
# cache, those import lines are left out of the copy, and `weed` is built from it (a go.mod
# `replace`; Go refuses -overlay for files in the module cache). Only import lines change.

SEAWEEDFS_MODULE_DIR = K8S_MODULE_DIR / "seaweedfs"
SEAWEEDFS_MODULE = "github.com/seaweedfs/seaweedfs"
SEAWEEDFS_PACKAGE = f"{SEAWEEDFS_MODULE}/weed"
SEAWEEDFS_TRIMMED = (
    "weed/command/imports.go",
    "weed/server/filer_server.go",
    "weed/s3api/auth_credentials.go",
)
"""The files whose blank imports of optional backends are left out of the copy."""
SEAWEEDFS_KEPT = (
    "weed/filer/leveldb",
    "weed/filer/leveldb2",
    "weed/filer/leveldb3",
    "weed/credential/filer_etc",
)
"""The blank imports kept: the filer's default stores and the S3 identities' loader."""
_SEAWEEDFS_BLANK_IMPORT = re.compile(r'^\s*_ "github\.com/seaweedfs/seaweedfs/(weed/[^"]+)"\s*$')


def seaweedfs_versions(module_dir: Path = SEAWEEDFS_MODULE_DIR) -> tuple[str, str]:
    """(the pinned commit, digest of the pin files and of what is left out) for the cache key.

    The module has no releases on the proxy: its version is a pseudo-version whose last
    part is the commit."""
    version = module_version((module_dir / "go.mod").read_text(), SEAWEEDFS_MODULE)
    recipe = f"{_pin_digest(module_dir)} {SEAWEEDFS_TRIMMED} {SEAWEEDFS_KEPT}"
    return version.rsplit("-", 1)[-1][:8], hashlib.sha256(recipe.encode()).hexdigest()[:10]


def seaweedfs_path(module_dir: Path = SEAWEEDFS_MODULE_DIR) -> Path:
    """Where `weed` for this pin lives (whether or not it is built yet)."""
    commit, digest = seaweedfs_versions(module_dir)
    return cache_root() / f"seaweedfs-{commit}-{digest}" / "bin" / "weed"


def trim_blank_imports(
    source: str, kept: tuple[str, ...] = SEAWEEDFS_KEPT
) -> tuple[str, list[str]]:
    """``source`` without its blank imports of SeaweedFS packages not in ``kept``, and the
    packages left out."""
    lines: list[str] = []
    dropped: list[str] = []
    for line in source.splitlines(keepends=True):
        found = _SEAWEEDFS_BLANK_IMPORT.match(line)
        if found and found.group(1) not in kept:
            dropped.append(found.group(1))
        else:
            lines.append(line)
    return "".join(lines), dropped


def ensure_seaweedfs(log: Callable[[str], None] = _default_log) -> Path:
    """Return the `weed` binary, building it first when missing (atomic, locked; a cold
    build logs its progress every 30 s)."""
    target = seaweedfs_path()
    if os.access(target, os.X_OK):
        return target
    log("SeaweedFS: not built yet; building it, or waiting for the build in progress")
    with locked(target.parent.parent / "build.lock"):
        if not os.access(target, os.X_OK):
            _build_seaweedfs(target, log)
    return target


def _build_seaweedfs(target: Path, log: Callable[[str], None]) -> None:
    go = find_go(log)
    module_dir = SEAWEEDFS_MODULE_DIR
    commit, _ = seaweedfs_versions(module_dir)
    env = {**os.environ, "GOTOOLCHAIN": "local"}
    started = time.monotonic()
    log(f"fetching the SeaweedFS module at {commit} and its dependencies")
    download = subprocess.run(
        [go, "mod", "download", "-json", SEAWEEDFS_MODULE],
        cwd=module_dir, capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    if download.returncode != 0:
        raise RuntimeError(f"go mod download {SEAWEEDFS_MODULE} failed:\n{download.stderr}")
    upstream = Path(json.loads(download.stdout)["Dir"])
    target.parent.mkdir(parents=True, exist_ok=True)
    # A fixed place (under the lock), not a temporary name: Go's build cache keys the
    # packages by their directory, so a second try reuses what the first one compiled.
    work = target.parent.parent / "src"
    shutil.rmtree(work, ignore_errors=True)
    src = work / "seaweedfs"
    src.mkdir(parents=True)
    try:
        shutil.copy(upstream / "go.mod", src / "go.mod")
        for part in ("weed", "telemetry/proto"):  # what `weed` imports from the module
            shutil.copytree(upstream / part, src / part)
        for relative in SEAWEEDFS_TRIMMED:
            path = src / relative
            path.chmod(0o644)  # the module cache's files are read-only
            text, dropped = trim_blank_imports(path.read_text())
            if not dropped:
                raise RuntimeError(f"{relative} has no blank import to leave out: a new layout?")
            path.write_text(text)
        modfile = work / "go.mod"
        pins = (module_dir / "go.mod").read_text()
        modfile.write_text(f"{pins}\nreplace {SEAWEEDFS_MODULE} => {src}\n")
        shutil.copy(module_dir / "go.sum", work / "go.sum")
        partial = target.with_name(f".weed.partial-{os.getpid()}")
        stamp = f"-X {SEAWEEDFS_MODULE}/weed/util/version.COMMIT={commit}"
        argv = [go, "build", "-v", "-buildvcs=false", f"-modfile={modfile}"]
        argv += ["-ldflags", f"-s -w {stamp}", "-o", str(partial), SEAWEEDFS_PACKAGE]
        log(f"building SeaweedFS {commit} (`weed`, optional backends left out): minutes cold")
        proc = subprocess.Popen(argv, cwd=module_dir, stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        tail: list[str] = []
        last_report = time.monotonic()
        for compiled, line in enumerate(proc.stderr, start=1):  # -v: one line a package
            tail = [*tail[-30:], line]
            if time.monotonic() - last_report >= 30:
                last_report = time.monotonic()
                log(f"SeaweedFS: {compiled} packages compiled, {last_report - started:.0f}s")
        if proc.wait() != 0:
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"go build {SEAWEEDFS_PACKAGE} failed:\n{''.join(tail)}")
        partial.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"SeaweedFS built in {time.monotonic() - started:.0f}s -> {target}")


# -- kwok ----------------------------------------------------------------------------------
# Fake nodes and pod lifecycles against the real API server, for the fleet benchmark
# (voicefleet_bench.fleet: thousands of pods, no kubelet). Its own module and cache dir, like
# kube-router's: its client-go is newer than the cluster's, and the pin never touches theirs.

KWOK_MODULE_DIR = K8S_MODULE_DIR / "kwok"
KWOK_MODULE = "sigs.k8s.io/kwok"
KWOK_PACKAGE = f"{KWOK_MODULE}/cmd/kwok"
KWOK_STAGES = KWOK_MODULE_DIR / "stages.yaml"
"""What kwok does to the nodes and pods it manages (its Stage objects; fleet.py passes it)."""


def kwok_versions(module_dir: Path = KWOK_MODULE_DIR) -> tuple[str, str]:
    """(kwok release, digest of the pin files) for the kwok cache key."""
    release = module_version((module_dir / "go.mod").read_text(), KWOK_MODULE)
    return release, _pin_digest(module_dir)


def kwok_path(module_dir: Path = KWOK_MODULE_DIR) -> Path:
    """Where kwok for this pin lives (whether or not it is built yet)."""
    release, digest = kwok_versions(module_dir)
    return cache_root() / f"kwok-{release}-{digest}" / "bin" / "kwok"


def ensure_kwok(log: Callable[[str], None] = _default_log) -> Path:
    """Return the kwok binary, building it first when missing (atomic, locked)."""
    release, _ = kwok_versions()
    return _ensure_tool(
        # kwok's own source carries its version (pkg/consts.Version): nothing to stamp.
        GoTool(Target("kwok", KWOK_PACKAGE, KWOK_MODULE_DIR), release, kwok_path(), "-s -w"),
        log,
    )
