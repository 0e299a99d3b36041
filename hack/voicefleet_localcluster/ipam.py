"""Pod IPs on the loopback network: one 127.0.X.0/24 per kubelet, one 127.0.X.Y per pod.

Linux routes all of 127.0.0.0/8 to `lo`, so a process can bind 127.0.X.Y:8080
without any network setup, and every pod can use the same port. Two clusters on
one machine (a developer's `make cluster-up` next to a test session) must not
hand out the same addresses, so each kubelet claims its third octet X by holding
an exclusive flock on a per-X file for its whole life; the kernel releases it
when the process dies, so a crash never leaks a claim. 127.0.0.0/24 is left to
the host (the control plane listens on 127.0.0.1).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO


class AddressesExhausted(RuntimeError):
    """Every pod address of this node is in use."""


class IpAllocator:
    """Hands out 127.0.X.2 … 127.0.X.254 round-robin, so a freed address is reused last.

    Round-robin (not lowest-free) avoids rebinding an address whose previous
    owner's sockets may linger briefly after it exits.
    """

    FIRST_HOST = 2
    LAST_HOST = 254

    def __init__(self, third_octet: int) -> None:
        if not 1 <= third_octet <= 254:
            raise ValueError("third octet must be within 1..254")
        self.third_octet = third_octet
        self._owners: dict[str, str] = {}  # ip -> owner key
        self._next = self.FIRST_HOST

    def _ip(self, host: int) -> str:
        return f"127.0.{self.third_octet}.{host}"

    def contains(self, ip: str) -> bool:
        parts = ip.split(".")
        return (
            len(parts) == 4
            and parts[:3] == ["127", "0", str(self.third_octet)]
            and parts[3].isdigit()
            and self.FIRST_HOST <= int(parts[3]) <= self.LAST_HOST
        )

    def reserve(self, ip: str, owner: str) -> bool:
        """Keep an address a pod already had (kubelet restart); False if taken or foreign."""
        if not self.contains(ip) or self._owners.get(ip, owner) != owner:
            return False
        self._owners[ip] = owner
        return True

    def allocate(self, owner: str) -> str:
        """The owner's address, allocating the next free one on first call."""
        for ip, key in self._owners.items():
            if key == owner:
                return ip
        size = self.LAST_HOST - self.FIRST_HOST + 1
        for step in range(size):
            host = self.FIRST_HOST + (self._next - self.FIRST_HOST + step) % size
            ip = self._ip(host)
            if ip not in self._owners:
                self._owners[ip] = owner
                self._next = host + 1 if host < self.LAST_HOST else self.FIRST_HOST
                return ip
        raise AddressesExhausted(f"all {size} addresses of 127.0.{self.third_octet}.0/24 in use")

    def release(self, owner: str) -> None:
        for ip in [ip for ip, key in self._owners.items() if key == owner]:
            del self._owners[ip]

    def in_use(self) -> dict[str, str]:
        return dict(self._owners)


class PodNetworkClaim:
    """An exclusive claim on one third octet, held as long as this object is open."""

    def __init__(self, third_octet: int, handle: IO[str]) -> None:
        self.third_octet = third_octet
        self._handle = handle

    @classmethod
    def acquire(cls, lock_dir: Path | None = None) -> PodNetworkClaim:
        directory = lock_dir or Path(tempfile.gettempdir()) / "voicefleet-podnet"
        directory.mkdir(parents=True, exist_ok=True)
        for octet in range(1, 255):
            handle = (directory / f"127.0.{octet}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return cls(octet, handle)
        raise AddressesExhausted("no free 127.0.X.0/24 pod network left on this machine")

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
