"""The node's own images: pause (sandbox), CoreDNS and a busybox for test pods.

No registry is reachable, so each is one static program packed as an OCI image
with `umoci` and imported into the node's containerd (`ctr images import`). Built
archives are cached beside the binaries under a key that hashes their inputs, and
an image is imported only when containerd does not already hold it (its store
survives `down`), so a warm start costs one `ctr images ls`.

The VoiceFleet images themselves (voicefleet-server, voicefleet-control) come from
`make images`, which imports into the same containerd (`node.containerd_socket()`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from voicefleet_localcluster import binaries, node

PAUSE_SOURCE = binaries.K8S_MODULE_DIR / "pause" / "pause.c"
BUSYBOX = Path("/bin/busybox")
REPOSITORY = "localhost/voicefleet"
PAUSE_IMAGE = f"{REPOSITORY}/pause:1"
BUSYBOX_IMAGE = f"{REPOSITORY}/busybox:1"
NOBODY = "65532:65532"


def coredns_image(version: str, binary: Path) -> str:
    """`coredns:<release>-<first 8 hex of the binary's sha256>`.

    An image is imported only when containerd lacks its ref, and containerd's store
    outlives the cache dirs: a ref that named the release alone would keep serving the
    binary of an older recipe (another plugin set, other flags) after a rebuild.
    """
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:8]
    return f"{REPOSITORY}/coredns:{version.lstrip('v')}-{digest}"


@dataclass(frozen=True)
class ImageSpec:
    """One single-layer image: files copied in (source, path in image, mode)."""

    ref: str
    files: tuple[tuple[Path, str, int], ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    user: str = NOBODY
    links: tuple[tuple[str, str], ...] = field(default=())  # (path in image, target)

    @property
    def name(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]

    def digest(self) -> str:
        """Hash of everything the image is made of: a changed input is a new archive."""
        h = hashlib.sha256(repr((self.ref, self.entrypoint, self.cmd, self.user)).encode())
        h.update(repr(self.links).encode())
        for source, dest, mode in self.files:
            h.update(f"{dest} {mode:o}\n".encode())
            h.update(source.read_bytes())
        return h.hexdigest()[:12]


def busybox_links(applets: Sequence[str]) -> tuple[tuple[str, str], ...]:
    return tuple((f"/bin/{a}", "/bin/busybox") for a in applets)


TEST_APPLETS = (
    "sh", "cat", "echo", "env", "head", "hostname", "httpd", "id", "ls", "mkdir", "nc",
    "nslookup", "sleep", "tail", "touch", "wget",
)  # fmt: skip


def compile_pause(out_dir: Path) -> Path:
    """`gcc -static` the sandbox program (a few hundred KB, no libc needed at run time)."""
    binary = out_dir / "pause"
    proc = subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", str(binary),
         str(PAUSE_SOURCE)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"gcc -static pause.c failed: {proc.stderr.strip()}")
    return binary


def _umoci(*args: str) -> None:
    proc = subprocess.run(["umoci", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"umoci {args[0]} failed: {proc.stderr.strip()}")


def pack(spec: ImageSpec, out: Path) -> Path:
    """Pack `spec` as an OCI layout tar at `out` (written atomically)."""
    with tempfile.TemporaryDirectory(prefix="vf-image-") as tmp:
        layout = Path(tmp) / "oci"
        bundle = Path(tmp) / "bundle"
        image = f"{layout}:{spec.tag}"
        _umoci("init", "--layout", str(layout))
        _umoci("new", "--image", image)
        _umoci("unpack", "--image", image, str(bundle))
        rootfs = bundle / "rootfs"
        for source, dest, mode in spec.files:
            target = rootfs / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            target.chmod(mode)
        for dest, link_target in spec.links:
            target = rootfs / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(link_target)
        (rootfs / "tmp").mkdir(mode=0o1777, exist_ok=True)
        _umoci("repack", "--image", image, str(bundle))
        config = ["config", "--image", image, "--config.user", spec.user]
        for arg in spec.entrypoint:
            config += ["--config.entrypoint", arg]
        for arg in spec.cmd:
            config += ["--config.cmd", arg]
        _umoci(*config)
        _umoci("gc", "--layout", str(layout))
        partial = out.with_name(f".{out.name}.{os.getpid()}")
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-C", str(layout), "-cf", str(partial), "."], check=True)
        partial.rename(out)
    return out


def node_images(bin_dir: Path, versions: binaries.Versions, work: Path) -> list[ImageSpec]:
    """The images the node needs: pause (compiled into `work`), CoreDNS, busybox."""
    pause = compile_pause(work)
    return [
        ImageSpec(PAUSE_IMAGE, ((pause, "/pause", 0o755),), ("/pause",)),
        ImageSpec(
            coredns_image(versions.coredns, bin_dir / "coredns"),
            ((bin_dir / "coredns", "/coredns", 0o755),),
            ("/coredns",),
        ),
        ImageSpec(
            BUSYBOX_IMAGE,
            ((BUSYBOX, "/bin/busybox", 0o755),),
            (),
            cmd=("/bin/sh",),
            links=busybox_links(TEST_APPLETS),
        ),
    ]


def present_images() -> set[str]:
    return set(node.ctr("images", "list", "--quiet", timeout=60).split())


def ensure_images(
    bin_dir: Path, versions: binaries.Versions, log: Callable[[str], None]
) -> list[str]:
    """Build (cached) and import every node image containerd lacks; return their refs."""
    cache = binaries.cache_root() / "node-images"
    have = present_images()
    with tempfile.TemporaryDirectory(prefix="vf-pause-") as tmp:
        specs = node_images(bin_dir, versions, Path(tmp))
        for spec in specs:
            if spec.ref in have:
                continue
            archive = cache / f"{spec.name.rsplit('/', 1)[1]}-{spec.digest()}.tar"
            if not archive.exists():
                log(f"packing image {spec.ref} with umoci")
                pack(spec, archive)
            log(f"importing {spec.ref} into containerd ({node.K8S_NAMESPACE})")
            node.ctr("images", "import", "--base-name", spec.name, str(archive))
    return [s.ref for s in specs]
