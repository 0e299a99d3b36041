"""Process-group helpers shared by the launcher and the kubelet.

Every process the local cluster starts (control-plane components, the kubelet,
each container) runs in its own session/process group, so one signal reaches a
whole tree (a shell wrapper and its children, uvicorn and its workers). Each also
carries `VOICEFLEET_CLUSTER_ID=<id>` in its environment: `down` sweeps /proc for
that marker after the orderly shutdown, so even a process orphaned by a crashed
kubelet is found and ended. Only processes bearing this cluster's marker (or a
recorded pid whose environment still carries it) are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MARKER_ENV = "VOICEFLEET_CLUSTER_ID"


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` for a process about to be started (the kernel picks
    it; the socket is closed at once). The one copy: tests and benchmarks import it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; everything after ')' is fixed.
    return raw[raw.rfind(")") + 2 :].split()


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie.

    Zombies are left for their parent to reap: reaping here would steal the exit
    status from a `subprocess.Popen` that owns the child.
    """
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def process_group_members(pgid: int) -> list[int]:
    """Live processes whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] not in ("Z", "X") and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def has_marker(pid: int, cluster_id: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"{MARKER_ENV}={cluster_id}".encode() in environ.split(b"\0")


def marked_processes(cluster_id: str) -> list[int]:
    """Every live process started by the cluster with this id (excluding the caller)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            if has_marker(pid, cluster_id) and alive(pid):
                found.append(pid)
    return found


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    return alive(pgid) or bool(process_group_members(pgid))


def terminate_groups(pgids: Iterable[int], grace: float, *, poll: float = 0.1) -> None:
    """SIGTERM each group, wait up to `grace` seconds for all, then SIGKILL survivors."""
    pending = [p for p in pgids if group_alive(p)]
    for pgid in pending:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        time.sleep(poll)
        pending = [p for p in pending if group_alive(p)]
    for pgid in pending:
        _signal_group(pgid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 5.0
    while pending and time.monotonic() < kill_deadline:
        time.sleep(poll)
        pending = [p for p in pending if group_alive(p)]


def kill_marked(cluster_id: str) -> list[int]:
    """SIGKILL every process still carrying this cluster's marker; return their pids."""
    stragglers = marked_processes(cluster_id)
    for pid in stragglers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(alive(p) for p in stragglers):
        time.sleep(0.05)
    return stragglers


def stop_process(proc: subprocess.Popen[Any], grace: float) -> int:
    """SIGTERM a child we started, give it ``grace`` seconds to drain, then SIGKILL.

    For one process (a server or operator under test, a benchmark's subject), not a
    group: those handle SIGTERM themselves and their exit code is what callers check.
    Returns the exit code (negative when a signal ended it).
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def become_subreaper() -> None:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants re-parent to this process.

    PID 1 on this machine kind never reaps, so without a subreaper every process that
    outlives its parent (containerd's shims, a component after `down`) stays a zombie.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def start_in_keeper(start: Callable[[], str]) -> str:
    """Run `start` in a forked keeper process that stays behind to reap the cluster.

    `voicefleet-cluster up` returns while the cluster runs on. Its components are
    children of the keeper, a child subreaper in its own session: it reaps them and
    every orphan below them (containerd's shims) as they exit, and exits itself once
    the last is gone (after `down`). Returns `start`'s result; raises RuntimeError
    with its error when it failed (the keeper has then exited).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the keeper
        os.close(read_fd)
        failed = False
        try:
            os.setsid()
            become_subreaper()
            message = "ok\n" + start()
        except BaseException as exc:  # report everything to the waiting parent
            message = f"error\n{exc}"
            failed = True
        with os.fdopen(write_fd, "w") as pipe:
            pipe.write(message)
        if failed:
            os._exit(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # let `make ... | tee` see EOF
            os.dup2(devnull, fd)
        while True:
            try:
                os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        reply = pipe.read()
    status, _, detail = reply.partition("\n")
    if status != "ok":
        os.waitpid(pid, 0)
        raise RuntimeError(detail or "the cluster's keeper process died while starting it")
    return detail
