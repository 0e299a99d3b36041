"""The README's shell blocks, run as written, in order: a copied command never fails.

The blocks run with bash (`set -euo pipefail`) in a scratch copy of the files `make`
needs (Makefile, pyproject.toml, hack/install-system-deps.sh with their times, so
`make install` sees nothing to do, and `.venv` linked in), so `.cluster/` is the
test's own and a developer's running `make up` is never touched. Two kinds of block
are not run to completion: `make serve` runs a server in the foreground, so it is
started in the background until the next block has used it; `make test` is this
suite itself.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from voicefleet_localcluster import binaries, node
from voicefleet_localcluster.controlplane import ClusterState
from voicefleet_localcluster.procs import marked_processes

pytestmark = pytest.mark.own_node  # `make up` starts the host's one node itself

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
MAKE_FILES = (
    "Makefile",
    "pyproject.toml",
    "hack/pyproject.toml",
    "hack/install-system-deps.sh",
    "README.md",
)


def bash_blocks(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"```bash\n(.*?)```", text, re.DOTALL)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binaries.ensure_binaries()  # cached by the session; `make up` would build it otherwise
    # Bring the checkout's venv up to date here first: in the copy, an out-of-date stamp
    # would make `make install` re-point the editable install at the scratch copy.
    subprocess.run(["make", "install"], cwd=REPO, check=True, capture_output=True, timeout=900)
    root = tmp_path_factory.mktemp("readme")
    for name in MAKE_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def run_block(block: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_readme_blocks_run_as_written(workdir: Path) -> None:
    blocks = bash_blocks(README.read_text())
    firsts = [b.strip().splitlines()[0] for b in blocks]
    assert firsts[0].startswith("make up"), firsts
    assert any(f.startswith("make down") for f in firsts)
    server: subprocess.Popen[bytes] | None = None
    state: ClusterState | None = None
    took: list[tuple[str, float]] = []  # printed: where the test's seconds go
    try:
        for block in blocks:
            first = block.strip().splitlines()[0]
            if first.startswith("make test"):
                continue  # this suite itself
            started = time.monotonic()
            if first.startswith("make serve"):
                server = subprocess.Popen(
                    ["bash", "-c", block],
                    cwd=workdir,
                    start_new_session=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                deadline = time.monotonic() + 120
                while True:
                    try:
                        if httpx.get("http://127.0.0.1:8080/readyz", timeout=2).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, "make serve never became ready"
                    assert server.poll() is None, "make serve exited"
                    time.sleep(0.5)
                took.append((first[:40], time.monotonic() - started))
                continue
            proc = run_block(block, workdir)
            assert proc.returncode == 0, (
                f"README block failed:\n{block}\n{proc.stdout}\n{proc.stderr}"
            )
            if first.startswith("make up"):
                assert "VoiceFleet is up" in proc.stdout
                url = (workdir / ".cluster" / "router-url").read_text().strip()
                assert url in proc.stdout
                assert "curl -s" in proc.stdout
                state = ClusterState.load(workdir / ".cluster" / "state.json")
            if server is not None:  # the block after `make serve` used it; stop it
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)
                server = None
            took.append((first[:40], time.monotonic() - started))
        print("\nREADME blocks, seconds each:", [(f, round(s, 1)) for f, s in took])
        # what the blocks wrote is what they promised
        assert (workdir / "hello.wav").read_bytes()[:4] == b"RIFF"
        pod_audio = (workdir / "pod.mp3").read_bytes()
        assert pod_audio[:3] == b"ID3" or pod_audio[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xe3")
        # `make down` left no process of the cluster behind
        assert state is not None
        assert not marked_processes(state.cluster_id)  # control plane, kubelet and every pod
        assert not node.kubepods_cgroups()  # every container gone with its cgroup
        assert not (workdir / ".cluster" / "state.json").exists()
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        if (workdir / ".cluster" / "state.json").exists():
            run_block("make down", workdir)
