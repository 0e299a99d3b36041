"""The fleet at the target size: 1,000 voices, 3,000 pods, on this machine (issue 20 item 5).

What the control plane costs when a fleet is large and nothing happens, and when one voice
gets a load step: the real ``voicefleet-operator`` (autoscaler on) and two real
``voicefleet-router`` replicas (as the chart runs them) against N TTSVoices whose pods are
faked.

- **Control plane**: the local cluster's etcd, kube-apiserver, controller-manager and
  scheduler (``ControlPlane(real_node=False)``: no kubelet, the host's real node untouched).
- **Nodes and pods**: kwok (built from its Go module, ``binaries.ensure_kwok``) manages
  ``--nodes`` fake nodes; its stages (``hack/k8s/kwok/stages.yaml``) make every pod bound
  to one Running and Ready at once, with an IP from ``--cidr`` (inside 198.18.0.0/15).
- **Pod addresses**: ``ip route add local <cidr> dev lo`` (removed on exit) makes the whole
  range local, so a connection to any pod IP reaches one process listening once on
  ``0.0.0.0:8080``, which tells pods apart by the address that was dialled
  (``getsockname``). It answers ``GET /load`` (the compact load line; held while the pod's
  load does not change when the poller asks to wait), ``GET /metrics`` (a real server's page,
  from :mod:`voicefleet_bench.router_idle`), the probes, and ``POST /v1/audio/speech`` with
  a simulated engine per pod (one request at a time, FIFO, ``SPEED`` x real time, a WAV of
  silence of the audio's length, the ``x-voicefleet-load`` header; 429 past 64 queued). It
  counts every request by path and by the process that sent it (the client's port looked up
  in ``/proc/net/tcp`` and the processes' descriptors), so polls are split between the
  routers and the operator.
- **Voices**: N TTSVoices with ``minReplicas = maxReplicas = 3``, except ``voice-0000``
  (3..12, 2 work-seconds per replica, 20 s scale-down delay): the one the load step hits.

For each size (``--pods``: 99, 999 and 3,000 by default, one cluster grown from one to the
next), in order: apply the voices it adds, time until every pod is ready, wait until the
operator's request count is still (or ``--settle-seconds``) and ``--quiet-seconds`` more,
then measure ``--idle-rounds`` windows of ``--idle-seconds`` idle (the table quotes their
medians), then ``--step-seconds`` of ``--step-clients`` closed-loop clients on
``voice-0000`` through both routers. Each window reports CPU (``/proc/<pid>/stat``, cores =
CPU-seconds per second) and RSS of each router, the operator and the fake pods' process, the
operator's API requests per second (its own FlowSchema,
``voicefleet_localcluster.flowcontrol``), and requests per pod per second by client and
path; the step adds the decision latency (first request sent -> ``spec.replicas`` of
``voice-0000`` raised, seen by a watch) and the requests served. The table goes into
``docs/fleet.md``, the plot into ``docs/fleet.png``.

Needs root (the route). Run it alone, under the shared benchmark lock::

    flock /tmp/vf/bench.lock .venv/bin/python -m voicefleet_bench.fleet
    .venv/bin/python -m voicefleet_bench.fleet --pods 30 --no-doc      # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import parse_qs

import httpx
import yaml

from voicefleet_api import labels
from voicefleet_api.load import LOAD_HEADER, LOAD_PATH, PodLoad, format_load
from voicefleet_inference.server.loadwait import MAX_HELD, MAX_WAIT_S, WAIT_HEADER

if TYPE_CHECKING:
    from voicefleet_localcluster.kubeapi import KubeClient
    from voicefleet_localcluster.testing import LocalCluster

__all__ = ["main"]

CIDR: Final = "198.18.240.0/20"
"""The fake pods' addresses (4,094): the top of the real node's pod range, which its
host-local IPAM fills from the bottom, so the two never meet (and the route is ours)."""
NODE_IP: Final = "198.18.239.254"
"""The fake nodes' InternalIP (in the benchmarking block; nothing dials it)."""
NAMESPACE: Final = "fleet"
STEP_VOICE: Final = "voice-0000"
PODS_PER_VOICE: Final = 3
STEP_MAX: Final = 12
FLOW: Final = "voicefleet-operator-fleet"
SPEED: Final = 4.0
"""Simulated engine speed, x real time (a CPU Piper voice runs at about this)."""
AUDIO_SECONDS_PER_CHAR: Final = 0.057
SAMPLE_RATE: Final = 22050
MAX_QUEUE: Final = 64
SECTION: Final = "fleet"


# -- the fake pods: one process answers for every pod -------------------------------------


@dataclass
class PodSim:
    """One fake pod's engine (one request at a time, the rest queued in order) and its load
    reports, numbered and held as the real server's (``server/app.py``, ``loadwait``)."""

    last_seq: int = 0
    """The ``seq`` of the last report written (every ``/load`` answer and load header)."""
    last_change: int = 0
    """The last ``seq`` written before the latest step: reports up to it are out of date."""
    running: bool = False
    busy_until: float = 0.0
    queue: deque[tuple[float, Callable[[], None]]] = field(default_factory=deque)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def report(self) -> bytes:
        """The load as a new report (numbered, as the real pod numbers each one it writes)."""
        left = max(0.0, self.busy_until - time.monotonic()) if self.running else 0.0
        self.last_seq += 1
        line = format_load(
            PodLoad(
                work_s=left + sum(s for s, _ in self.queue),
                depth=len(self.queue),
                in_flight=1 if self.running else 0,
                seq=self.last_seq,
                free=MAX_QUEUE - len(self.queue),
            )
        )
        return line.encode()

    def holds(self, after: int) -> bool:
        """Whether a long-poll that has report ``after`` waits: nothing changed since it
        (``after`` 0, or higher than any report written here, is answered at once)."""
        return self.last_change < after <= self.last_seq and len(self.waiters) < MAX_HELD

    def changed(self) -> None:
        """A step (admitted, started, finished): older reports are out of date; wake every
        held poll."""
        self.last_change = self.last_seq
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


class Owners:
    """Which named process holds the client end of a connection, by the client's address
    and port (as ``/proc/net/tcp`` writes them: ``0100007F:1F90``).

    The table (``/proc/net/tcp`` joined with each named process's socket descriptors) is
    rebuilt only when the driver asks for the counts, between windows: at 3,000 pods a
    rebuild reads ~10,000 descriptors, and doing that on the request path (as a first
    version did) stalled the event loop until the listen queue overflowed."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self._by_end: dict[str, str] = {}

    @staticmethod
    def end(ip: str, port: int) -> str:
        """An IPv4 end as ``/proc/net/tcp`` writes it (the address in host byte order)."""
        return "".join(f"{b:02X}" for b in reversed(socket.inet_aton(ip))) + f":{port:04X}"

    def lookup(self, ip: str, port: int) -> str | None:
        """The owner as of the last :meth:`refresh`."""
        return self._by_end.get(self.end(ip, port))

    def refresh(self) -> None:
        inodes: dict[str, str] = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if link.startswith("socket:["):
                            inodes[link[8:-1]] = name
        by_end: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                parts = line.split()
                owner = inodes.get(parts[9]) if len(parts) > 9 else None
                if owner is not None:
                    by_end[parts[1]] = owner
        self._by_end = by_end


def _wav(seconds: float) -> bytes:
    """A mono 16-bit WAV of silence, ``seconds`` long."""
    data = int(seconds * SAMPLE_RATE) * 2
    head = b"RIFF" + (36 + data).to_bytes(4, "little") + b"WAVEfmt "
    head += (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    head += SAMPLE_RATE.to_bytes(4, "little") + (SAMPLE_RATE * 2).to_bytes(4, "little")
    head += (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    return head + b"data" + data.to_bytes(4, "little") + bytes(data)


def load_wait(query: str) -> tuple[int, float] | None:
    """``(after, wait seconds)`` of ``/load?wait=S&after=N`` (the long-poll: held while the
    load is that of report N, at most S seconds); None for a plain poll."""
    if not query:
        return None
    params = parse_qs(query)
    try:
        wait = float(params.get("wait", ["0"])[0])
        after = int(params.get("after", ["0"])[0])
    except ValueError:
        return None
    return (after, min(wait, MAX_WAIT_S)) if wait > 0 else None


class FakePods:
    """Every pod in one asyncio process (see the module docstring)."""

    def __init__(self, cidr: str) -> None:
        self.network = ipaddress.ip_network(cidr)
        self.pods: dict[str, PodSim] = {}
        self.owners = Owners()
        self.connections: set[PodConnection] = set()
        self.gone: Counter[tuple[str, str]] = Counter()
        """Requests of connections closed since the last reset, by (owner, kind); an owner
        not known when it closed is "closed"."""
        self.held: set[asyncio.Future[None]] = set()
        """Long-polls being held."""
        from voicefleet_bench.router_idle import _metrics_page

        self.metrics_page = _metrics_page()

    def pod(self, ip: str) -> PodSim:
        sim = self.pods.get(ip)
        if sim is None:
            sim = self.pods[ip] = PodSim()
        return sim

    def serves(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in self.network
        except ValueError:
            return False

    def reset(self) -> None:
        """Zero every count: a measuring window starts."""
        for connection in self.connections:
            connection.counts.clear()
        self.gone.clear()

    def stats(self) -> dict[str, Any]:
        """Requests since the last reset by client process and kind, and the pods each
        process asked for load (owners looked up once, now)."""
        self.owners.refresh()
        counts = Counter(self.gone)
        polled: dict[str, set[str]] = {}
        for connection in self.connections:
            owner = connection.resolve() or "other"
            for kind, n in connection.counts.items():
                counts[owner, kind] += n
            if any(k.startswith("load") for k in connection.counts):
                polled.setdefault(owner, set()).add(connection.ip)
        by_owner: dict[str, dict[str, int]] = {}
        for (owner, kind), n in counts.items():
            by_owner.setdefault(owner, {})[kind] = n
        return {
            "counts": by_owner,
            "polled_pods": {owner: len(ips) for owner, ips in polled.items()},
            "pods_seen": len(self.pods),
            "connections": len(self.connections),
        }


def _response(
    status: int, body: bytes, kind: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 429: b"Too Many Requests"}.get(status, b"OK")
    head = [b"HTTP/1.1 %d %s" % (status, reason), b"content-type: " + kind]
    head.append(b"content-length: %d" % len(body))
    head.extend(name + b": " + value for name, value in extra)
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class PodConnection(asyncio.Protocol):
    """One client connection to one fake pod (HTTP/1.1, kept alive, one request at a time)."""

    def __init__(self, fake: FakePods) -> None:
        self.fake = fake
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.peer: tuple[str, int] = ("", 0)
        self.owner: str | None = None
        self.counts: Counter[str] = Counter()
        """Requests on this connection since the last reset, by kind."""
        self.busy = False
        """A response is outstanding (held poll or speech): later bytes wait for it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no subclass
        self.ip = self.transport.get_extra_info("sockname")[0]
        self.peer = self.transport.get_extra_info("peername")[:2]
        if not self.fake.serves(self.ip):
            transport.close()
            return
        self.fake.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def resolve(self) -> str | None:
        """The process holding the other end, once known (:meth:`Owners.refresh`)."""
        if self.owner is None:
            self.owner = self.fake.owners.lookup(*self.peer)
        return self.owner

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1

    def _next(self) -> None:
        while not self.busy:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            method, target = lines[0].split(" ", 2)[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self._handle(method, target, body)

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _done(self, data: bytes) -> None:
        self._send(data)
        self.busy = False
        self._next()

    def _handle(self, method: str, target: str, body: bytes) -> None:
        path, _, query = target.partition("?")
        fake = self.fake
        if path == LOAD_PATH:
            sim = fake.pod(self.ip)
            wait = load_wait(query)
            if wait is None:
                self._count("load")
                self._send(self._load(sim, None))
            elif sim.holds(wait[0]):
                self._count("load-held")
                self.busy = True
                task = asyncio.ensure_future(self._held(sim, wait[1]))
                fake.held.add(task)  # a reference, until it answers
                task.add_done_callback(fake.held.discard)
            else:
                self._count("load-wait")  # answered at once: it had changed
                self._send(self._load(sim, wait[1]))
        elif path == "/metrics":
            self._count("metrics")
            self._send(_response(200, fake.metrics_page, b"text/plain; version=0.0.4"))
        elif method == "POST":
            self._count("speech")
            self._speech(body)
        elif path in ("/healthz", "/readyz", "/livez"):
            self._count("probe")
            self._send(_response(200, b'{"status":"ready"}', b"application/json"))
        else:
            self._count("other")
            self._send(_response(404, b'{"detail":"not found"}', b"application/json"))

    def _load(self, sim: PodSim, wait: float | None) -> bytes:
        """A ``/load`` answer; one to a long-poll says how long it could have been held."""
        extra = [] if wait is None else [(WAIT_HEADER.encode(), b"%g" % wait)]
        return _response(200, sim.report(), b"text/plain; charset=utf-8", extra)

    async def _held(self, sim: PodSim, seconds: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        sim.waiters.append(waiter)
        await asyncio.wait((waiter,), timeout=seconds)
        if waiter in sim.waiters:
            sim.waiters.remove(waiter)
        self._done(self._load(sim, seconds))

    def _speech(self, body: bytes) -> None:
        sim = self.fake.pod(self.ip)
        if len(sim.queue) >= MAX_QUEUE:
            extra = [(LOAD_HEADER.encode(), sim.report()), (b"retry-after", b"1")]
            self._send(_response(429, b'{"error":"full"}', b"application/json", extra))
            return
        try:
            text = str(json.loads(body).get("input") or "")
        except (ValueError, AttributeError):
            text = ""
        audio_s = max(0.5, len(text) * AUDIO_SECONDS_PER_CHAR)
        self.busy = True

        def finish() -> None:
            extra = [(LOAD_HEADER.encode(), sim.report())]
            self._done(_response(200, _wav(audio_s), b"audio/wav", extra))

        sim.queue.append((audio_s / SPEED, finish))
        sim.changed()
        if not sim.running:
            _run_next(sim)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self in self.fake.connections:
            self.fake.connections.discard(self)
            owner = self.owner or "closed"
            for kind, n in self.counts.items():
                self.fake.gone[owner, kind] += n


def _run_next(sim: PodSim) -> None:
    """Start the pod's next queued request, if any; its end starts the one after."""
    if not sim.queue:
        return
    service_s, finish = sim.queue.popleft()
    sim.running = True
    sim.busy_until = time.monotonic() + service_s
    sim.changed()

    def end() -> None:
        sim.running = False
        sim.changed()
        finish()
        _run_next(sim)

    asyncio.get_running_loop().call_later(service_s, end)


class Control(asyncio.Protocol):
    """The driver's side door (127.0.0.1 only): ``GET /stats``, ``POST /owners``, ``POST
    /reset`` (zero the counters for a new window)."""

    def __init__(self, fake: FakePods) -> None:
        self.fake = fake
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.transport is None:
            return
        head = self.buffer[:end].decode("latin-1").split("\r\n")
        length = next(
            (int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:")),
            0,
        )
        if len(self.buffer) < end + 4 + length:
            return
        body = self.buffer[end + 4 : end + 4 + length]
        self.buffer = self.buffer[end + 4 + length :]
        method, path = head[0].split(" ", 2)[:2]
        if method == "POST" and path == "/owners":
            self.fake.owners.pids.update({str(k): int(v) for k, v in json.loads(body).items()})
        elif method == "POST" and path == "/reset":
            self.fake.reset()
        answer = json.dumps(self.fake.stats()).encode()
        self.transport.write(_response(200, answer, b"application/json"))


async def serve_pods(cidr: str, port: int, control_port: int) -> None:
    """Listen once for every pod address and once for the driver; serve until killed."""
    fake = FakePods(cidr)
    loop = asyncio.get_running_loop()
    pods = await loop.create_server(
        lambda: PodConnection(fake), "0.0.0.0", port, backlog=4096, reuse_address=True
    )
    control = await loop.create_server(lambda: Control(fake), "127.0.0.1", control_port)
    print(f"fake pods listening on 0.0.0.0:{port} for {cidr}", flush=True)
    async with pods, control:
        await asyncio.Event().wait()


def _serve_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fleet fake-pods")
    parser.add_argument("--cidr", default=CIDR)
    parser.add_argument("--port", type=int, default=labels.SERVER_PORT)
    parser.add_argument("--control-port", type=int, required=True)
    args = parser.parse_args(argv)
    runner: Callable[[Any], None] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    runner(serve_pods(args.cidr, args.port, args.control_port))
    return 0


# -- the stage: route, control plane, kwok, operator, routers --------------------------------


@contextlib.contextmanager
def local_route(cidr: str) -> Iterator[None]:
    """``ip route add local <cidr> dev lo`` for the block, deleted again on the way out."""
    network = ipaddress.IPv4Network(cidr)
    if not network.subnet_of(ipaddress.IPv4Network("198.18.0.0/15")):
        raise SystemExit(f"--cidr {cidr} must lie inside 198.18.0.0/15")
    route = ["local", str(network), "dev", "lo"]
    subprocess.run(["ip", "route", "del", *route], capture_output=True, check=False)  # stale
    subprocess.run(["ip", "route", "add", *route], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "route", "del", *route], check=False)


def _say(line: str) -> None:
    print(f"[fleet] {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def control_plane() -> Iterator[LocalCluster]:
    """A local cluster without the real node (see ``ControlPlane(real_node=False)``)."""
    from voicefleet_localcluster.testing import start_local_cluster

    cluster = start_local_cluster(log=_say, timeout=180, real_node=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def started(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A process whose output goes to ``log``, stopped (SIGTERM, then SIGKILL) on exit."""
    from voicefleet_localcluster.procs import stop_process

    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        stop_process(proc, grace=20)


def fake_node(name: str) -> dict[str, Any]:
    """A Node kwok manages (the annotation is kwok's convention; it manages all nodes here)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok"},
        },
        "spec": {},
    }


def voice(index: int) -> dict[str, Any]:
    """Voice ``index``: three pods for good, but the step voice (3..12 on 2 work-seconds)."""
    name = f"voice-{index:04d}"
    autoscaling: dict[str, Any] = {"minReplicas": PODS_PER_VOICE, "maxReplicas": PODS_PER_VOICE}
    if name == STEP_VOICE:
        autoscaling = {
            "minReplicas": PODS_PER_VOICE,
            "maxReplicas": STEP_MAX,
            "targetWorkSecondsPerReplica": 2,
            "scaleDownDelaySeconds": 20,
        }
    return {
        "apiVersion": "voicefleet.io/v1alpha1",
        "kind": "TTSVoice",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "replicas": PODS_PER_VOICE,
            "model": {"bundled": "en_US-joe-medium"},
            "resources": {"cpu": "100m", "memory": "256Mi"},
            "autoscaling": autoscaling,
        },
    }


class Watcher:
    """A list + watch of one collection in a thread: the latest object by name, and for
    every change the time it was seen (``record`` picks what to keep of it)."""

    def __init__(
        self,
        client: KubeClient,
        path: str,
        record: Callable[[dict[str, Any]], Any],
        **params: str,
    ) -> None:
        self.client = client
        self.path = path
        self.params = params
        self.record = record
        self.items: dict[str, Any] = {}
        self.history: list[tuple[float, str, Any]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        version: str | None = None
        while not self.stop.is_set():
            try:
                if version is None:
                    listed = self.client.get(self.path, **self.params)
                    with self.lock:
                        self.items = {
                            o["metadata"]["name"]: self.record(o) for o in listed.get("items") or []
                        }
                    version = str(listed["metadata"]["resourceVersion"])
                version = self._watch(version)
            except Exception as exc:  # a dropped watch: list again
                _say(f"watch {self.path}: {exc!r}; listing again")
                version = None
                time.sleep(1.0)

    def _watch(self, version: str) -> str | None:
        """Follow the watch from ``version``; the version to go on from (None: list again).

        A watch that ends at its timeout goes on from the last version it saw (bookmarks
        keep that fresh), so a measuring window never carries a full list of the pods."""
        params = {**self.params, "resourceVersion": version, "allowWatchBookmarks": "true"}
        for event in self.client.watch(self.path, params, self.stop, timeout_seconds=300):
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            if event.get("type") == "ERROR":
                return None  # 410 Gone: the version is too old
            version = str(meta.get("resourceVersion") or version)
            name = meta.get("name")
            if event.get("type") == "BOOKMARK" or name is None:
                continue
            with self.lock:
                if event["type"] == "DELETED":
                    self.items.pop(name, None)
                    value = None
                else:
                    value = self.items[name] = self.record(obj)
                self.history.append((time.monotonic(), name, value))
        return version

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.items)

    def close(self) -> None:
        self.stop.set()


def _pod_ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return not (obj.get("metadata") or {}).get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def _replicas(obj: dict[str, Any]) -> int:
    return int((obj.get("spec") or {}).get("replicas") or 0)


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Stage:
    """What a window needs to reach: the cluster, the processes, the fake pods' door."""

    cluster: LocalCluster
    client: KubeClient
    pids: dict[str, int]
    control: str
    routers: list[str]
    pods: Watcher
    step_voice: Watcher


def _control(stage: Stage, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    if body is None:
        got = httpx.get(stage.control + path, timeout=30)
    else:
        got = httpx.post(stage.control + path, json=body, timeout=30)
    got.raise_for_status()
    result: dict[str, Any] = got.json()
    return result


def _cpu(pid: int) -> float:
    from voicefleet_bench.procs import cpu_seconds

    try:
        return cpu_seconds(pid)
    except OSError:
        return float("nan")


def _rss(pid: int) -> float:
    from voicefleet_bench.procs import memory_mb

    try:
        return memory_mb(pid).get("VmRSS", float("nan"))
    except OSError:
        return float("nan")


def ready_pods(stage: Stage) -> int:
    return sum(1 for ready in stage.pods.snapshot().values() if ready)


@contextlib.contextmanager
def window(stage: Stage, into: dict[str, Any]) -> Iterator[None]:
    """Measure what happens inside the block into ``into``: cores and RSS per process, the
    operator's API requests, and per-pod requests by client and kind."""
    from voicefleet_localcluster.flowcontrol import request_counts

    _control(stage, "/reset", {})
    flow_before, _ = request_counts(stage.cluster, FLOW)
    cpu_before = {name: _cpu(pid) for name, pid in stage.pids.items()}
    started_at = time.monotonic()
    yield
    wall = time.monotonic() - started_at
    cpu_after = {name: _cpu(pid) for name, pid in stage.pids.items()}
    stats = _control(stage, "/stats")
    flow_after, _ = request_counts(stage.cluster, FLOW)
    pods = ready_pods(stage)
    into["seconds"] = round(wall, 1)
    into["pods_ready"] = pods
    into["cores"] = {n: round((cpu_after[n] - cpu_before[n]) / wall, 4) for n in stage.pids}
    into["rss_mb"] = {n: round(_rss(pid), 1) for n, pid in stage.pids.items()}
    into["operator_api_per_s"] = round((flow_after - flow_before) / wall, 2)
    per_pod: dict[str, dict[str, float]] = {}
    for owner, kinds in stats["counts"].items():
        per_pod[owner] = {k: round(n / wall / max(pods, 1), 3) for k, n in kinds.items()}
    into["requests_per_pod_s"] = per_pod
    into["polled_pods"] = stats["polled_pods"]
    into["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]


async def _load_step(routers: Sequence[str], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` closed-loop clients posting short requests for the step voice, spread
    over the routers (as their Service would), for ``seconds``."""
    import aiohttp

    from voicefleet_bench.router_common import SENTENCES

    codes: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client(index: int) -> None:
            url = f"{routers[index % len(routers)]}/v1/audio/speech"
            n = index
            while True:
                body = {"model": f"{NAMESPACE}/{STEP_VOICE}", "input": SENTENCES[n % 4]}
                n += 1
                try:
                    async with session.post(url, json=body) as response:
                        await response.read()
                        codes[str(response.status)] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    codes[type(exc).__name__] += 1

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        await asyncio.sleep(seconds)
        for task in tasks:  # the step ends here: requests still out are dropped
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return dict(codes)


def measure_size(stage: Stage, have: int, voices: int, args: argparse.Namespace) -> dict[str, Any]:
    """Grow the fleet from ``have`` to ``voices`` voices, then its idle and step windows."""
    from voicefleet_bench.operator_bench import parallel_apply
    from voicefleet_localcluster.flowcontrol import request_counts, settled_counts

    result: dict[str, Any] = {"voices": voices}
    want = voices * PODS_PER_VOICE
    flow_before, _ = request_counts(stage.cluster, FLOW)
    started_at = time.monotonic()
    parallel_apply(stage.client, [voice(i) for i in range(have, voices)], threads=8)
    applied = time.monotonic() - started_at
    deadline = started_at + args.ready_timeout
    while ready_pods(stage) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {ready_pods(stage)} of {want} pods ready in time")
        time.sleep(0.5)
    result["applied_s"] = round(applied, 1)
    result["all_ready_s"] = round(time.monotonic() - started_at, 1)
    _say(f"{voices} voices: {want} pods ready {result['all_ready_s']} s after the apply")
    try:
        flow_after, _ = settled_counts(stage.cluster, FLOW, quiet=5.0, timeout=args.settle_seconds)
        result["settled"] = True
    except AssertionError:
        flow_after, _ = request_counts(stage.cluster, FLOW)
        result["settled"] = False  # still busy: measured anyway, and said so
    # What growing cost the operator in API requests: a voice's own objects are a few
    # requests; reads per pod event would show as more per voice with more pods.
    result["operator_requests_per_new_voice"] = round(
        (flow_after - flow_before) / max(1, voices - have), 2
    )
    time.sleep(args.quiet_seconds)  # the routers' first asks of the new pods are over
    rounds: list[dict[str, Any]] = []
    for _ in range(args.idle_rounds):
        idle: dict[str, Any] = {}
        with window(stage, idle):
            time.sleep(args.idle_seconds)
        rounds.append(idle)
        _say(f"idle: {json.dumps(idle)}")
    result["idle"] = median_window(rounds)
    result["idle_rounds"] = rounds

    before = _replicas_now(stage)
    step: dict[str, Any] = {"replicas_before": before}
    with window(stage, step):
        t0 = time.monotonic()
        step["codes"] = asyncio.run(_load_step(stage.routers, args.step_clients, args.step_seconds))
    raised = [
        (t, r)
        for t, name, r in list(stage.step_voice.history)
        if name == STEP_VOICE and t >= t0 and r is not None and r > before
    ]
    step["decision_s"] = round(raised[0][0] - t0, 2) if raised else None
    step["replicas_after"] = max((r for _, r in raised), default=before)
    step["served_per_s"] = round(step["codes"].get("200", 0) / step["seconds"], 1)
    result["step"] = step
    _say(f"step: {json.dumps(step)}")
    _settle_step_voice(stage, before)
    return result


def median_window(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One window from several: the median of every number (per process, per client and
    kind), the last round's load average."""
    import statistics

    def merge(values: list[Any]) -> Any:
        if all(isinstance(v, dict) for v in values):
            keys = {k for v in values for k in v}
            return {k: merge([v.get(k, 0) for v in values]) for k in sorted(keys)}
        if all(isinstance(v, int | float) for v in values):
            return round(statistics.median(values), 4)
        return values[-1]

    merged: dict[str, Any] = merge(list(rounds))
    merged["rounds"] = len(rounds)
    return merged


def _replicas_now(stage: Stage) -> int:
    value = stage.step_voice.snapshot().get(STEP_VOICE)
    return int(value) if value is not None else PODS_PER_VOICE


def _settle_step_voice(stage: Stage, base: int, timeout: float = 180.0) -> None:
    """Wait until the step voice is back at its base count (scale-down delay 20 s)."""
    deadline = time.monotonic() + timeout
    while _replicas_now(stage) > base and time.monotonic() < deadline:
        time.sleep(1.0)


# -- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from voicefleet_bench.operator_bench import SA_NAMESPACE, start_operator
    from voicefleet_bench.procs import BIN, free_port, wait_ready
    from voicefleet_localcluster import binaries
    from voicefleet_localcluster.kubeapi import KubeClient
    from voicefleet_localcluster.kubeconfig import load as load_kubeconfig

    kwok = binaries.ensure_kwok(_say)
    work = Path(tempfile.mkdtemp(prefix="voicefleet-fleet-"))
    _say(f"logs in {work}")
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(local_route(args.cidr))
        cluster = stack.enter_context(control_plane())
        client = KubeClient(load_kubeconfig(cluster.kubeconfig), timeout=60)
        stack.callback(client.close)
        control_port = free_port()
        fake = stack.enter_context(
            started(
                [sys.executable, "-m", "voicefleet_bench.fleet", "fake-pods", "--cidr",
                 args.cidr, "--control-port", str(control_port)],
                work / "fake-pods.log",
            )
        )  # fmt: skip
        kwok_home = work / "kwok-home"  # no ~/.kwok/kwok.yaml of the user's is read
        kwok_home.mkdir()
        kwok_proc = stack.enter_context(
            started(
                [str(kwok), f"--kubeconfig={cluster.kubeconfig}", "--manage-all-nodes=true",
                 f"--cidr={args.cidr}", f"--node-ip={NODE_IP}",
                 "--node-lease-duration-seconds=40",
                 f"--config={binaries.KWOK_STAGES}"],
                work / "kwok.log",
                env={**os.environ, "HOME": str(kwok_home)},
            )
        )  # fmt: skip
        for i in range(args.nodes):
            client.create("/api/v1/nodes", fake_node(f"fleet-node-{i:02d}"))
        cluster.install_crds()
        cluster.kubectl_run("create", "namespace", NAMESPACE)
        token = os.urandom(16).hex()
        router_ports = [free_port(), free_port()]
        routers = [f"http://127.0.0.1:{p}" for p in router_ports]
        operator, _ = start_operator(
            cluster,
            work,
            FLOW,
            ["--all-namespaces"],
            extra=[
                *(f"--router-metrics-url={url}/metrics" for url in routers),
                f"--router-token={token}",
                "--autoscale-interval=1",
            ],
            env=_product_env(args.src),
        )
        stack.callback(_stop, operator)
        cluster.apply(_router_rbac(cluster))
        router_config = cluster.service_account_kubeconfig(
            SA_NAMESPACE, "voicefleet-router", work / "router.kubeconfig", duration="6h"
        )
        router_procs = []
        for name, port in zip(("router-a", "router-b"), router_ports, strict=True):
            argv = [
                str(BIN / "voicefleet-router"), "--host", "127.0.0.1", "--port", str(port),
                f"--namespace={NAMESPACE}", "--watch-namespaces=*",
                f"--kubeconfig={router_config}", "--log-level", "warning",
            ]  # fmt: skip
            env = {**_product_env(args.src), "VOICEFLEET_ROUTER_METRICS_TOKEN": token}
            proc = stack.enter_context(started(argv, work / f"{name}.log", env=env))
            wait_ready(proc, f"http://127.0.0.1:{port}/readyz", 120, work / f"{name}.log")
            router_procs.append(proc)
        pids = {
            "router-a": router_procs[0].pid,
            "router-b": router_procs[1].pid,
            "operator": operator.pid,
            "fake-pods": fake.pid,
            "kwok": kwok_proc.pid,
            **{n: cluster.state.pids[n] for n in ("kube-apiserver", "etcd")},
            "driver": os.getpid(),
        }
        control = f"http://127.0.0.1:{control_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                clients = ("router-a", "router-b", "operator", "driver")  # who dials pods
                _control_post(control, "/owners", {n: pids[n] for n in clients})
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or fake.poll() is not None:
                    raise
                time.sleep(0.2)
        pods = Watcher(
            client,
            f"/api/v1/namespaces/{NAMESPACE}/pods",
            _pod_ready,
            labelSelector=labels.VOICE_LABEL,
        )
        stack.callback(pods.close)
        step_voice = Watcher(
            client,
            f"/apis/voicefleet.io/v1alpha1/namespaces/{NAMESPACE}/ttsvoices",
            _replicas,
            fieldSelector=f"metadata.name={STEP_VOICE}",
        )
        stack.callback(step_voice.close)
        stage = Stage(cluster, client, pids, control, routers, pods, step_voice)
        have = 0
        for target in args.pods:
            voices = max(1, round(target / PODS_PER_VOICE))
            result = measure_size(stage, have, voices, args)
            have = voices
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.json is not None:  # each size as it is done: a later one may fail
                saved = {"commit": args.commit, "command": args.command, "results": results}
                args.json.write_text(json.dumps(saved, indent=1) + "\n")
    return results


def _product_env(src: Path | None) -> dict[str, str]:
    """The operator's and routers' environment: this one's less ``KUBECONFIG``; with
    ``src`` (a ``git archive`` of the commit to measure), its packages first on
    ``PYTHONPATH``, so what runs is that commit and not this checkout's working tree."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    if src is not None:
        paths = [str(src / part) for part in ("inference", "operator", "crds")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _control_post(control: str, path: str, body: dict[str, Any]) -> None:
    httpx.post(control + path, json=body, timeout=10).raise_for_status()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    from voicefleet_localcluster.procs import stop_process

    stop_process(proc, grace=20)


def _router_rbac(cluster: LocalCluster) -> str:
    """The router's ServiceAccount and read-only role as the chart renders them."""
    from voicefleet_bench.operator_bench import SA_NAMESPACE
    from voicefleet_localcluster.testing import OPERATOR_CHART

    args = ["template", "voicefleet", str(OPERATOR_CHART), "--namespace", SA_NAMESPACE]
    for template in ("templates/router/serviceaccount.yaml", "templates/router/rbac.yaml"):
        args += ["--show-only", template]
    rendered: str = cluster.helm_run(*args).stdout
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(rendered) if d]
    if "voicefleet-router" not in names:
        raise RuntimeError(f"the chart's router ServiceAccount is not voicefleet-router: {names}")
    return rendered


# -- the report -------------------------------------------------------------------------------


def _polls(window_result: dict[str, Any], owners: Sequence[str]) -> float:
    per_pod = window_result["requests_per_pod_s"]
    return float(
        sum(
            n
            for owner in owners
            for kind, n in per_pod.get(owner, {}).items()
            if kind in ("load", "load-held", "load-wait", "metrics")
        )
    )


def table(results: Sequence[dict[str, Any]], command: str, commit: str) -> str:
    from voicefleet_bench.report import fmt, markdown_table

    header = [
        "pods (voices)",
        "window",
        "router A / B, cores",
        "operator, cores",
        "operator RSS, MB",
        "router RSS, MB",
        "operator API requests/s",
        "polls per pod/s: routers / operator",
        "decision, s",
        "fake pods, cores",
        "API server + etcd, cores",
        "load average",
    ]
    rows = []
    for r in results:
        for name in ("idle", "step"):
            w = r[name]
            c, rss = w["cores"], w["rss_mb"]
            decision = w.get("decision_s")
            rows.append(
                [
                    f"{int(w['pods_ready']):,} ({r['voices']:,})",
                    name if name == "idle" else f"step ({w.get('served_per_s', 0)} req/s)",
                    f"{fmt(c['router-a'], 3)} / {fmt(c['router-b'], 3)}",
                    fmt(c["operator"], 3),
                    fmt(rss["operator"], 0),
                    f"{fmt(rss['router-a'], 0)} / {fmt(rss['router-b'], 0)}",
                    fmt(w["operator_api_per_s"], 2),
                    f"{fmt(_polls(w, ('router-a', 'router-b')), 2)} / "
                    f"{fmt(_polls(w, ('operator',)), 2)}",
                    "—" if name == "idle" else (fmt(decision, 2) if decision else "none"),
                    fmt(c["fake-pods"], 2),
                    fmt(c["kube-apiserver"] + c["etcd"], 2),
                    " ".join(w["loadavg"]),
                ]
            )
    ready = ", ".join(
        f"{r['voices'] * PODS_PER_VOICE:,} pods ready {r['all_ready_s']} s after the apply"
        + (
            f" ({r['operator_requests_per_new_voice']} operator API requests per voice added)"
            if "operator_requests_per_new_voice" in r
            else ""
        )
        for r in results
    )
    lines = [
        f"Measured at commit `{commit}` with `{command}`; {os.cpu_count()} cores. Growth: {ready}.",
        "",
        *markdown_table(header, rows),
    ]
    return "\n".join(lines)


def plot(
    results: Sequence[dict[str, Any]],
    path: Path,
    baseline: Sequence[dict[str, Any]] = (),
    baseline_label: str = "",
) -> None:
    """The figure of a run; ``baseline`` (an earlier run's results) adds its operator's
    CPU and polls, grey, for a before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pods = [r["idle"]["pods_ready"] for r in results]
    fig, (cores, traffic) = plt.subplots(1, 2, figsize=(11, 4))
    if baseline:
        before = [r["idle"]["pods_ready"] for r in baseline]
        tag = f" ({baseline_label})" if baseline_label else ""
        cores.plot(
            before,
            [r["idle"]["cores"]["operator"] for r in baseline],
            ":x",
            color="grey",
            label=f"operator, idle, before{tag}",
        )
        traffic.plot(
            before,
            [_polls(r["idle"], ("operator",)) for r in baseline],
            ":x",
            color="grey",
            label=f"operator polls per pod/s, idle, before{tag}",
        )
    for name, style in (("idle", "-o"), ("step", "--s")):
        for proc, label in (("router-a", "router (one replica)"), ("operator", "operator")):
            cores.plot(
                pods, [r[name]["cores"][proc] for r in results], style, label=f"{label}, {name}"
            )
        traffic.plot(
            pods,
            [_polls(r[name], ("router-a", "router-b")) for r in results],
            style,
            label=f"router polls per pod/s, {name}",
        )
        traffic.plot(
            pods,
            [_polls(r[name], ("operator",)) for r in results],
            style,
            label=f"operator polls per pod/s, {name}",
        )
        traffic.plot(
            pods,
            [r[name]["operator_api_per_s"] for r in results],
            style,
            label=f"operator API requests/s, {name}",
        )
    # issue 20's targets at 3,000 pods, idle
    cores.axhline(0.1, color="tab:blue", linewidth=0.8, linestyle=":", label="target, router")
    cores.axhline(0.5, color="tab:orange", linewidth=0.8, linestyle=":", label="target, operator")
    for ax, title in ((cores, "CPU, cores"), (traffic, "requests per second")):
        ax.set_xscale("log")
        ax.set_xlabel("ready pods")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fake-pods"]:
        return _serve_main(argv[1:])
    from voicefleet_bench import REPO
    from voicefleet_bench.machine import git_revision
    from voicefleet_bench.procs import exit_cleanly_on_sigterm
    from voicefleet_bench.report import publish

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[99, 999, 3000])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--cidr", default=CIDR)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--idle-rounds", type=int, default=3, help="idle windows (medians)")
    parser.add_argument("--quiet-seconds", type=float, default=20.0, help="before the first")
    parser.add_argument("--step-seconds", type=float, default=20.0)
    parser.add_argument("--step-clients", type=int, default=32)
    parser.add_argument("--settle-seconds", type=float, default=120.0)
    parser.add_argument("--ready-timeout", type=float, default=1200.0)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "fleet.md")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "fleet.png")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="JSON",
        help="measure nothing: write the table and plot of a run's --json (with --command)",
    )
    parser.add_argument("--command", default="", help="with --report: the command that ran")
    parser.add_argument("--commit", default="", help="with --report: the commit measured")
    parser.add_argument(
        "--src",
        type=Path,
        default=None,
        help="run the operator and routers from this tree (git archive of the commit measured)",
    )
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="JSON",
        help="with --report: an earlier run's --json, plotted grey beside it (before/after)",
    )
    parser.add_argument("--baseline-label", default="", help="with --baseline: what it ran")
    args = parser.parse_args(argv)
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        if isinstance(saved, list):
            saved = {"results": saved}
        command = args.command or saved.get("command", "")
        commit = args.commit or saved.get("commit", "unknown")
        publish(table(saved["results"], command, commit), args.output, SECTION)
        baseline: list[dict[str, Any]] = []
        if args.baseline is not None:
            earlier = json.loads(args.baseline.read_text())
            baseline = earlier if isinstance(earlier, list) else earlier["results"]
        plot(saved["results"], args.plot, baseline, args.baseline_label)
        return 0
    if os.geteuid() != 0:
        raise SystemExit("the fleet benchmark adds a local route: run it as root")
    if any(p < PODS_PER_VOICE for p in args.pods) or args.pods != sorted(args.pods):
        raise SystemExit("--pods: ascending sizes of at least 3 (the fleet grows)")
    exit_cleanly_on_sigterm()
    _free_or_exit(labels.SERVER_PORT)
    commit = git_revision(("inference", "operator", "crds", "hack"))
    if args.src is not None:
        commit = f"{_src_commit(args.src)} (operator and routers from {args.src})"
    command = "python -m voicefleet_bench.fleet " + " ".join(argv)
    args.commit, args.command = commit, command.strip()
    results = run(args)
    publish(table(results, command.strip(), commit), args.output, SECTION, write=not args.no_doc)
    if not args.no_doc:
        plot(results, args.plot)
    return 0


def _src_commit(src: Path) -> str:
    """The commit of a ``--src`` tree: its ``.commit`` file (docs/fleet.md writes it from
    ``git get-tar-commit-id``), else the tree's name."""
    marker = src / ".commit"
    return marker.read_text().strip() if marker.exists() else src.name


def _free_or_exit(port: int) -> None:
    """The fake pods listen on 0.0.0.0:<port>: say so at once if something holds it."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise SystemExit(
                f"port {port} is taken on this host ({exc}): the fake pods need it"
            ) from None


if __name__ == "__main__":
    sys.exit(main())
