"""Can this machine run the real node? Checked before anything starts.

A node that cannot run containers fails late and obscurely (a sandbox that never
starts, a kubelet log line about cgroups); these checks name what is missing and
how to fix it, so `make up` / `make cluster-up` stop at once with that message.
Each check reads one fact through a `Host` (the real one, or a fake in unit tests)
and the verdicts are pure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEPS_HINT = "run hack/install-system-deps.sh (or `make install`)"


@dataclass(frozen=True)
class Host:
    """The facts the checks read; `Host.real()` reads this machine."""

    euid: int
    filesystems: str  # /proc/filesystems
    which: Callable[[str], str | None]
    exists: Callable[[Path], bool]
    cgroup_mounts: str  # /proc/self/mounts

    @classmethod
    def real(cls) -> Host:
        def read(path: str) -> str:
            try:
                return Path(path).read_text()
            except OSError:
                return ""

        return cls(
            euid=os.geteuid(),
            filesystems=read("/proc/filesystems"),
            which=shutil.which,
            exists=Path.exists,
            cgroup_mounts=read("/proc/self/mounts"),
        )


class PreflightError(RuntimeError):
    """The machine cannot run the node; the message lists every problem and its fix."""


REQUIRED_PROGRAMS = {
    "containerd": "containerd",
    "containerd-shim-runc-v2": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "iptables-save": "iptables",
    "conntrack": "conntrack",
    "ipset": "ipset",
    "ip": "iproute2",
    "umoci": "umoci",
    "gcc": "gcc",
}
CNI_PLUGINS = ("bridge", "host-local", "portmap", "loopback")
CNI_DIR = Path("/usr/lib/cni")
CGROUP_CONTROLLERS = ("cpu", "memory", "pids")


def problems(host: Host) -> list[str]:
    """Every reason the node cannot start here, each with its fix (empty when fine)."""
    found = []
    if host.euid != 0:
        found.append(
            "not root: the node's kubelet, containerd and iptables need root "
            "(run `sudo make up`, or as root)"
        )
    if not any(line.split()[-1:] == ["overlay"] for line in host.filesystems.splitlines()):
        found.append(
            "no overlayfs in /proc/filesystems: containerd's snapshotter needs it "
            "(`modprobe overlay`, or a kernel with CONFIG_OVERLAY_FS)"
        )
    for program, package in REQUIRED_PROGRAMS.items():
        if host.which(program) is None:
            found.append(f"{program} missing (Debian package {package}): {DEPS_HINT}")
    missing_cni = [p for p in CNI_PLUGINS if not host.exists(CNI_DIR / p)]
    if missing_cni:
        found.append(
            f"CNI plugins {', '.join(missing_cni)} missing from {CNI_DIR} "
            f"(Debian package containernetworking-plugins): {DEPS_HINT}"
        )
    if not host.exists(Path("/bin/busybox")):
        found.append(f"/bin/busybox missing (Debian package busybox-static): {DEPS_HINT}")
    found += cgroup_problems(host.cgroup_mounts)
    return found


def cgroup_problems(mounts: str) -> list[str]:
    """The kubelet (cgroupfs driver) needs cpu, memory and pids controllers, writable."""
    v2 = False
    v1: set[str] = set()
    read_only: list[str] = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        fstype, options = fields[2], fields[3].split(",")
        if fstype == "cgroup2" and fields[1] == "/sys/fs/cgroup":
            v2 = True
            if "ro" in options:
                read_only.append(fields[1])
        elif fstype == "cgroup":
            controllers = {o for o in options if o in CGROUP_CONTROLLERS}
            v1 |= controllers
            if controllers and "ro" in options:
                read_only.append(fields[1])
    found = []
    if not v2:
        missing = [c for c in CGROUP_CONTROLLERS if c not in v1]
        if missing:
            found.append(
                f"cgroup controllers {', '.join(missing)} are not mounted: the kubelet cannot "
                "enforce pod limits (mount cgroup v2 at /sys/fs/cgroup, or the v1 controllers)"
            )
    if read_only:
        found.append(
            f"cgroups mounted read-only ({', '.join(read_only)}): containers cannot be "
            "started here (run on a host or a privileged VM, not inside an unprivileged container)"
        )
    return found


def check(host: Host | None = None) -> None:
    """Raise PreflightError naming every problem; return quietly when the node can run."""
    found = problems(host or Host.real())
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise PreflightError(f"this machine cannot run the local cluster's node:\n{lines}")
