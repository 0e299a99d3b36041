"""`make images`: build the base, the server and control images, and load them into the node.

The edge around `images.py` (which decides names, keys and command lines): it runs
debootstrap, the builder (buildah here; docker or podman where a daemon answers) and
containerd's `ctr`. Steps, each printed as `[make images] ...` with its time:

1. The base: a Debian bookworm root filesystem from debootstrap (minbase, Python from
   Debian, security updates applied), imported as `localhost/voicefleet-base:bookworm`.
   Cached twice over: the image carries its recipe key as a label, and the root
   filesystem's tarball is kept under the cache dir, so only a changed recipe (or
   `--refresh-base`, for new security updates) runs debootstrap again.
2. Each image from `docker/*.Dockerfile`, with the builder's layer cache: a source-only
   change rebuilds only the last, small layer.
3. Each image exported to an OCI archive under the cache dir (only when its ID changed)
   and imported into the node's containerd, namespace `k8s.io`, only when containerd
   does not already hold that digest. Without containerd (`--no-load`, or it cannot
   start) the archives stay and the command to load them is printed.

The builder's full output goes to a log file; the terminal gets the Dockerfile steps,
and the log's last lines when a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, get_args

from voicefleet_localcluster import binaries, images
from voicefleet_localcluster.images import Builder, Flavor, ImageSpec

Logger = Callable[[str], None]
INSTALL_SCRIPT = images.REPO_ROOT / "hack" / "images" / "install-deps.sh"


class ImageBuildError(Exception):
    """A step of `make images` failed; the message says which and what to do."""


def say(line: str) -> None:
    print(f"[make images] {line}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Under the same cache root as the Go binaries: base tarballs, archives, logs, storage."""
    return binaries.cache_root() / "images"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_logged(
    argv: Sequence[str],
    log_file: Path,
    *,
    echo: Callable[[str], bool] = lambda line: False,
    show: Logger = say,
    cwd: Path | None = None,
    what: str = "",
) -> str:
    """Run `argv`, its output appended to `log_file`; `show` the lines `echo` picks.

    Returns the output; raises ImageBuildError naming the step, with the log's tail.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out: list[str] = []
    with log_file.open("a", encoding="utf-8") as log:
        log.write(f"\n$ {shlex.join(argv)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        except FileNotFoundError as exc:
            raise ImageBuildError(f"{what or argv[0]}: {argv[0]} is not installed") from exc
        stream: IO[str] | None = proc.stdout
        assert stream is not None
        for line in stream:
            log.write(line)
            out.append(line)
            if echo(line):
                text = line.rstrip()
                show("  " + (text if len(text) <= 110 else text[:107] + "..."))
        code = proc.wait()
    if code != 0:
        raise ImageBuildError(
            f"{what or argv[0]} failed (exit {code}); last lines of {log_file}:\n" + _tail(log_file)
        )
    return "".join(out)


def _quiet(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, check=False, timeout=timeout
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


def ensure_tools(log: Logger = say) -> None:
    """debootstrap and buildah (and umoci for the image test), installed when missing."""
    missing = [tool for tool in ("debootstrap", "buildah", "umoci") if not shutil.which(tool)]
    if not missing:
        return
    log(f"missing {', '.join(missing)}: running {INSTALL_SCRIPT.relative_to(images.REPO_ROOT)}")
    proc = subprocess.run([str(INSTALL_SCRIPT)], check=False)
    still = [tool for tool in missing if not shutil.which(tool)]
    if proc.returncode != 0 or still:
        raise ImageBuildError(
            f"{', '.join(still or missing)} missing and could not be installed; install the "
            f"Debian packages by hand: apt-get install --no-install-recommends "
            f"{' '.join(still or missing)}"
        )


def detect_builder(storage: Path) -> Builder:
    """docker or podman when a daemon answers, else buildah (installed if missing)."""
    docker = bool(shutil.which("docker")) and _quiet(["docker", "info"]).returncode == 0
    podman = (
        not docker and bool(shutil.which("podman")) and _quiet(["podman", "info"]).returncode == 0
    )
    builder = images.choose_builder(docker, podman, bool(shutil.which("buildah")), storage)
    if builder is None:
        raise ImageBuildError(
            "no container builder: docker/podman have no daemon and buildah is missing "
            "(apt-get install --no-install-recommends buildah)"
        )
    return builder


def host_recipe() -> images.BaseRecipe:
    """The base recipe with the Debian mirror this host's apt uses."""
    texts: list[str] = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if path.suffix in (".list", ".sources") or path.name == "sources.list":
            try:
                texts.append(path.read_text())
            except OSError:
                continue
    sources = [s for text in texts for s in images.parse_apt_sources(text)]
    mirror, security = images.debian_mirrors(sources)
    return images.BaseRecipe(mirror=mirror, security_mirror=security)


def host_pip_ca() -> Path | None:
    """The CA bundle this host's pip trusts (see `images.pip_ca_bundle`), if it exists."""
    confs: list[str] = []
    for path in (
        Path(os.environ.get("PIP_CONFIG_FILE", "/nonexistent")),
        Path.home() / ".config" / "pip" / "pip.conf",
        Path.home() / ".pip" / "pip.conf",
        Path("/etc/pip.conf"),
    ):
        if path.is_file():
            confs.append(path.read_text(errors="replace"))
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    found = images.pip_ca_bundle(os.environ, confs, system if system.is_file() else None)
    return found if found is not None and found.is_file() else None


# -- the base -----------------------------------------------------------------------------


def _base_label(builder: Builder) -> str | None:
    proc = _quiet(builder.label(images.BASE_REF, images.BASE_KEY_LABEL))
    return proc.stdout.strip() if proc.returncode == 0 else None


def _make_rootfs(recipe: images.BaseRecipe, rootfs: Path, log_file: Path, log: Logger) -> None:
    """debootstrap, then slim and update it: the base's whole content."""
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root (run `make images` as root or with sudo)")
    started = time.monotonic()
    log(f"debootstrap {recipe.suite} ({recipe.variant}) from {recipe.mirror} (minutes when cold)")
    run_logged(
        [
            "debootstrap",
            f"--variant={recipe.variant}",
            f"--include={','.join(recipe.packages)}",
            recipe.suite,
            str(rootfs),
            recipe.mirror,
        ],
        log_file,
        echo=lambda line: (
            line.startswith("I: Retrieving Release") or line.startswith("I: Base system installed")
        ),
        show=log,
        what="debootstrap",
    )
    log(f"debootstrap done in {time.monotonic() - started:.0f}s; applying updates")
    (rootfs / "etc/dpkg/dpkg.cfg.d/voicefleet-slim").write_text(images.SLIM_DPKG_CONFIG)
    (rootfs / "etc/apt/apt.conf.d/90voicefleet").write_text(images.APT_CONFIG)
    (rootfs / "etc/apt/sources.list").write_text(recipe.sources_list)
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    for args in (
        ["apt-get", "-qq", "update"],
        ["apt-get", "-y", "-qq", "-o", "Dpkg::Options::=--force-confold", "upgrade"],
        ["apt-get", "clean"],
    ):
        run_logged(
            ["env", *(f"{k}={v}" for k, v in env.items()), "chroot", str(rootfs), *args],
            log_file,
            what=f"{args[0]} {args[-1]} in the base",
        )
    _slim(rootfs)


def _slim(rootfs: Path) -> None:
    """What an image must not carry: apt lists and debs, logs, the host's identity, docs."""
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/log/apt/*",
        "var/log/*.log",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/groff/*",
        "usr/share/lintian/*",
    ):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != "lock":
                path.unlink()
    for name in ("etc/resolv.conf", "etc/hostname", "etc/machine-id"):
        (rootfs / name).unlink(missing_ok=True)
    (rootfs / "etc/machine-id").write_text("")  # systemd-less; empty like Debian's images
    for path in (rootfs / "usr/share/locale").glob("*"):
        if path.name != "locale.alias":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    doc = rootfs / "usr/share/doc"
    for path in sorted(doc.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_symlink() or path.is_file():
            if path.name != "copyright":
                path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def _import_base(builder: Builder, tarball: Path, key: str, log_file: Path) -> None:
    """The root filesystem tarball as the local base image, labelled with its recipe key."""
    env = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    label = f"{images.BASE_KEY_LABEL}={key}"
    if builder.kind != "buildah":
        changes = [
            "--change",
            f"ENV {env}",
            "--change",
            "ENV LANG=C.UTF-8",
            "--change",
            f"LABEL {label}",
            "--change",
            'CMD ["/bin/bash"]',
        ]
        run_logged(
            [builder.kind, "import", *changes, str(tarball), images.BASE_REF],
            log_file,
            what="import of the base",
        )
        return
    cmd = builder.cmd
    container = run_logged(cmd("from", "scratch"), log_file, what="buildah from").split()[-1]
    try:
        run_logged(cmd("add", container, str(tarball), "/"), log_file, what="buildah add")
        run_logged(
            cmd(
                "config",
                "--env",
                env,
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                "/bin/bash",
                "--label",
                label,
                container,
            ),
            log_file,
            what="buildah config",
        )
        run_logged(cmd("commit", "-q", container, images.BASE_REF), log_file, what="buildah commit")
    finally:
        _quiet(cmd("rm", container))


def ensure_base(
    builder: Builder, recipe: images.BaseRecipe, *, refresh: bool, log_file: Path, log: Logger = say
) -> None:
    """The base image, reusing the builder's copy or the cached tarball when the key matches."""
    key = recipe.key
    if not refresh and _base_label(builder) == key:
        log(f"base {images.BASE_REF} up to date (recipe {key})")
        return
    tarball = cache_dir() / f"base-{recipe.suite}-{key}.tar"
    if refresh or not tarball.exists():
        started = time.monotonic()
        scratch = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir()))
        try:
            _make_rootfs(recipe, scratch / "rootfs", log_file, log)
            partial = tarball.with_suffix(".partial")
            # Numeric owners: the image's own /etc/passwd, not this host's, names them.
            run_logged(
                [
                    "tar",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "-C",
                    str(scratch / "rootfs"),
                    "-cf",
                    str(partial),
                    ".",
                ],
                log_file,
                what="tar of the base",
            )
            partial.replace(tarball)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for old in cache_dir().glob(f"base-{recipe.suite}-*.tar"):
            if old != tarball:
                old.unlink()  # an older recipe's: never used again
        log(f"base root filesystem built in {time.monotonic() - started:.0f}s: {tarball}")
    log(f"importing {tarball.name} as {images.BASE_REF}")
    _import_base(builder, tarball, key, log_file)


# -- the images ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """One built image: its reference, the builder's image ID and its OCI archive."""

    ref: str
    image_id: str
    archive: Path


def _is_step(line: str) -> bool:
    text = line.lstrip()
    return "STEP " in text[:20] or text.startswith("Step ") or text.startswith("#")


def build_image(
    builder: Builder,
    spec: ImageSpec,
    *,
    secrets: Mapping[str, Path],
    log_file: Path,
    log: Logger = say,
) -> Built:
    """Build one image (layer cache on) and export it to its archive when it changed."""
    undeclared = images.undeclared_args(spec, spec.dockerfile.read_text())
    if undeclared:
        raise ImageBuildError(f"{spec.dockerfile.name} declares no ARG {', '.join(undeclared)}")
    started = time.monotonic()
    log(f"building {spec.ref} from {spec.dockerfile.relative_to(images.REPO_ROOT)}")
    run_logged(
        builder.build(spec, images.REPO_ROOT, secrets),
        log_file,
        echo=_is_step,
        show=log,
        cwd=images.REPO_ROOT,
        what=f"build of {spec.ref}",
    )
    image_id = run_logged(builder.image_id(spec.ref), log_file, what="inspect").strip()
    log(f"built {spec.ref} in {time.monotonic() - started:.0f}s (id {image_id[:12]})")
    archive = cache_dir() / "archives" / spec.archive_name
    stamp = archive.with_suffix(".id")
    if archive.exists() and stamp.exists() and stamp.read_text().strip() == image_id:
        log(f"archive up to date: {archive}")
    else:
        started = time.monotonic()
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(archive.name + ".partial")
        partial.unlink(missing_ok=True)
        run_logged(builder.export(spec.ref, partial), log_file, what=f"export of {spec.ref}")
        partial.replace(archive)
        stamp.write_text(image_id + "\n")
        size = archive.stat().st_size / 1e6
        log(f"exported {archive.name} ({size:.0f} MB) in {time.monotonic() - started:.0f}s")
    return Built(spec.ref, image_id, archive)


def archive_tags(archive: Path) -> list[str]:
    """The references a docker-archive names (reads only its manifest.json)."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise ImageBuildError(f"{archive} has no manifest.json (not a docker-archive)")
        return images.archive_tags(member.read().decode())


def _containerd_digests() -> dict[str, str]:
    """ref -> manifest digest of every image in the node's containerd (k8s.io)."""
    from voicefleet_localcluster import node  # the node's containerd; NODE owns it

    rows = (line.split() for line in node.ctr("images", "ls").splitlines()[1:])
    return {fields[0]: fields[2] for fields in rows if len(fields) > 2}


def load_into_node(built: Sequence[Built], log: Logger = say) -> None:
    """Import each archive into the node's containerd unless it already holds that build.

    The stamp beside an archive records (image ID, containerd's digest) after an import;
    both matching means containerd holds this very build (its store survives `make
    down`), so a warm `make images` costs one `ctr images ls`.
    """
    from voicefleet_localcluster import node

    socket = node.ensure_containerd(log)
    present = _containerd_digests()
    for image in built:
        stamp = image.archive.with_suffix(".loaded")
        recorded = stamp.read_text().split() if stamp.exists() else []
        if recorded == [image.image_id, present.get(image.ref, "-")]:
            log(f"containerd already has {image.ref}")
            continue
        tags = archive_tags(image.archive)
        if image.ref not in tags:
            raise ImageBuildError(f"{image.archive} names {tags}, not {image.ref}")
        started = time.monotonic()
        node.ctr("images", "import", str(image.archive), timeout=900)
        digest = _containerd_digests().get(image.ref)
        if digest is None:
            raise ImageBuildError(f"containerd imported {image.archive} but lists no {image.ref}")
        stamp.write_text(f"{image.image_id} {digest}\n")
        log(
            f"loaded {image.ref} into containerd ({socket}, k8s.io) "
            f"in {time.monotonic() - started:.0f}s"
        )


def _load_or_explain(built: Sequence[Built], log: Logger) -> None:
    try:
        load_into_node(built, log)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log(f"not loaded into the node's containerd: {exc}")
        log("load them later (the node's containerd must run):")
        for image in built:
            log(
                f"  ctr -n k8s.io -a /run/voicefleet-node/containerd.sock images import "
                f"{image.archive}"
            )
        raise ImageBuildError("images built but not loaded (see above)") from exc


def manifest(built: Sequence[Built]) -> str:
    """What was built, for other tools: ref -> archive and image ID (JSON)."""
    return json.dumps(
        {b.ref: {"archive": str(b.archive), "id": b.image_id} for b in built}, indent=2
    )


def build_images(flavor: Flavor, *, refresh_base: bool, log: Logger = say) -> list[Built]:
    """Steps 1-2 and step 3's export: the built images, not loaded into containerd."""
    root = cache_dir()
    log_file = root / "logs" / f"images-{time.strftime('%Y%m%dT%H%M%S')}.log"
    with binaries.locked(root / ".lock"):  # one `make images` at a time per cache
        ensure_tools(log)
        builder = detect_builder(root / "storage")
        log(f"builder: {builder.kind}; full log: {log_file}")
        ensure_base(builder, host_recipe(), refresh=refresh_base, log_file=log_file, log=log)
        ca = host_pip_ca()
        secrets = {"pip-ca": ca} if ca else {}
        built = [
            build_image(builder, spec, secrets=secrets, log_file=log_file, log=log)
            for spec in images.image_specs(flavor, images.version())
        ]
        (root / f"images-{flavor}.json").write_text(manifest(built))
    return built


def load_built(built: Sequence[Built], log: Logger = say) -> None:
    """Step 3's import into the node's containerd; ImageBuildError says how to do it later.

    Under the build's lock: two builders at once (two sessions collecting) import one
    after the other, and the second finds the stamps current.
    """
    with binaries.locked(cache_dir() / ".lock"):
        _load_or_explain(built, log)


def build_all(flavor: Flavor, *, load: bool, refresh_base: bool, log: Logger = say) -> list[Built]:
    """Steps 1-3 of the module docstring; returns the built images."""
    started = time.monotonic()
    built = build_images(flavor, refresh_base=refresh_base, log=log)
    if load:
        load_built(built, log)
    else:
        log("not loading into containerd (--no-load); archives:")
        for image in built:
            log(f"  {image.archive}")
    log(f"done in {time.monotonic() - started:.0f}s")
    return built


def serialized(log: Logger) -> Logger:
    """`log`, one line at a time across threads (two builds printing progress at once)."""
    lock = threading.Lock()

    def locked_log(line: str) -> None:
        with lock:
            log(line)

    return locked_log


class BackgroundBuild:
    """`build_images` in a thread, started at once, for a caller with other work to do.

    On a fresh machine the image build (debootstrap and pip: mostly download and disk)
    runs beside the Go builds (compilers on every core) instead of after them. Its
    progress goes to `log` as `images: ...` lines, so `log` must be thread-safe
    (`serialized`). `wait()` returns the images or raises the build's own error.

    As a context manager: when the block raises (a Go build failed), leaving it waits
    for the image build to end, so no builder outlives this process half-way through
    the cache, and logs how it ended; the block's error is what propagates.
    """

    def __init__(self, flavor: Flavor, log: Logger) -> None:
        self._flavor = flavor
        self._log = log
        self._built: list[Built] = []
        self._error: BaseException | None = None
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="image-build", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._built = build_images(
                self._flavor, refresh_base=False, log=lambda line: self._log(f"images: {line}")
            )
        except BaseException as exc:  # re-raised in the caller's thread by wait()
            self._error = exc
        else:
            self._log(f"images: built in {time.monotonic() - self._started:.0f}s")

    def __enter__(self) -> BackgroundBuild:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            return
        if self._thread.is_alive():
            self._log("images: letting the image build finish before stopping")
        self._thread.join()
        if self._error is not None:
            self._log(f"images: failed too: {self._error}")

    def wait(self) -> list[Built]:
        """Join the build; its images, or its error (ImageBuildError names the step)."""
        if self._thread.is_alive():
            self._log("waiting for the image build to finish")
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voicefleet_localcluster.imagebuild",
        description=__doc__.split("\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--flavor",
        choices=get_args(Flavor),
        default=os.environ.get("FLAVOR") or "cpu",
        help="cpu: server + control images; gpu: the CUDA server",
    )
    parser.add_argument(
        "--no-load",
        dest="load",
        action="store_false",
        help="build and export only; do not import into the node's containerd",
    )
    parser.add_argument(
        "--refresh-base",
        action="store_true",
        help="run debootstrap again (new Debian security updates)",
    )
    args = parser.parse_args(argv)
    try:
        built = build_all(args.flavor, load=args.load, refresh_base=args.refresh_base)
    except ImageBuildError as exc:
        say(f"error: {exc}")
        return 1
    for image in built:
        print(image.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
