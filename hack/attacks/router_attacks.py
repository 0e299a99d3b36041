"""Bounded attacks on a real ``voicefleet-router`` process, on loopback only (issue 18).

Each attack starts a fresh router (its one voice's only pod listens nowhere, so requests
are held as at zero replicas) and reads the router's memory from ``/proc`` while it runs:

* ``chunked``: one request body of ``--chunked-mb`` MB sent chunked (no Content-Length);
* ``held``: ``--held`` concurrent requests of 1 MB each to the voice with no pod;
* ``idle``: ``--idle`` connections that never send a byte (from two helper processes, so
  the client side stays under its own descriptor limit), then ``/healthz`` timed, then
  how many of them the router closed after its header timeout.

Prints one JSON object per attack. ``--python`` and ``--pythonpath`` run another checkout
of the router (e.g. an older commit exported with ``git archive``) for a before/after.

    .venv/bin/python hack/attacks/router_attacks.py chunked held idle
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from voicefleet_bench.loadgen import series_value
from voicefleet_bench.procs import free_port, router_under

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of ``pid`` in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


@contextlib.contextmanager
def router(args: argparse.Namespace, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    dead = free_port()
    argv, env = router_under(
        args.python, args.pythonpath, port, "--static-upstreams", f"joe=http://{HOST}:{dead}"
    )
    proc = subprocess.Popen(
        [*argv, *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(args.log, "ab"),  # noqa: SIM115 - the process owns it
    )
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the router did not start; see " + args.log)
        time.sleep(0.1)
    try:
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def chunked(args: argparse.Namespace) -> dict[str, object]:
    with router(args) as (proc, url):
        before = memory_mb(proc.pid)
        reader, writer = await asyncio.open_connection(HOST, int(url.rsplit(":", 1)[1]))
        writer.write(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = 256 * 1024
        frame = f"{chunk:x}\r\n".encode() + b" " * chunk + b"\r\n"
        total = args.chunked_mb << 20
        sent = 0
        started = time.monotonic()
        answered_at_mb: float | None = None

        async def push() -> None:
            nonlocal sent
            while sent < total:
                writer.write(frame)
                await writer.drain()
                sent += chunk
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        pushing = asyncio.create_task(push())
        status_line = await asyncio.wait_for(reader.readline(), 600)
        answered_at_mb = sent / (1 << 20)
        pushing.cancel()
        with contextlib.suppress(BaseException):
            await pushing
        writer.close()
        await asyncio.sleep(0.5)
        after = memory_mb(proc.pid)
    return {
        "attack": f"one {args.chunked_mb} MB chunked body",
        "status": status_line.decode().strip(),
        "mb_sent_when_answered": round(answered_at_mb, 1),
        "seconds": round(time.monotonic() - started, 2),
        "rss_before_mb": round(before[0], 1),
        "rss_peak_mb": round(after[1], 1),
        "rss_after_mb": round(after[0], 1),
    }


async def held(args: argparse.Namespace) -> dict[str, object]:
    body = json.dumps({"model": "joe", "input": "x" * 1_000_000, "voice": "default"})
    with router(args, "--max-held-per-voice", str(args.held)) as (proc, url):
        before = memory_mb(proc.pid)
        limits = httpx.Limits(max_connections=args.held)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            jobs = [
                asyncio.ensure_future(client.post(url + "/v1/audio/speech", content=body))
                for _ in range(args.held)
            ]
            done, waiting = await asyncio.wait(jobs, timeout=20)
            during = memory_mb(proc.pid)
            async with httpx.AsyncClient(timeout=10) as probe:
                page = (await probe.get(url + "/metrics")).text
            pending = series_value(page, 'voicefleet_router_pending_requests{voice="default/joe"}')
            codes: dict[str, int] = {}
            for job in done:
                try:
                    key = str(job.result().status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                codes[key] = codes.get(key, 0) + 1
            for job in waiting:
                job.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        await asyncio.sleep(0.5)
        after = memory_mb(proc.pid)
    return {
        "attack": f"{args.held} concurrent 1 MB requests held (voice without a pod)",
        "answered_within_20s": codes,
        "client_requests_unanswered_at_20s": len(waiting),
        "router_held_at_20s": pending,
        "rss_before_mb": round(before[0], 1),
        "rss_during_mb": round(during[0], 1),
        "rss_peak_mb": round(after[1], 1),
        "rss_after_mb": round(after[0], 1),
    }


def _hold_idle(port: int, count: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """In a helper process: open ``count`` idle connections, then report how many the
    router had closed after ``seconds``."""
    socks = []
    for _ in range(count):
        s = socket.socket()
        try:
            s.connect((HOST, port))
        except OSError:
            s.close()
            break
        s.setblocking(False)
        socks.append(s)
    out.put(("opened", len(socks)))
    time.sleep(seconds)
    closed = 0
    for s in socks:
        try:
            closed += s.recv(1) == b""
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
        s.close()
    out.put(("closed", closed))


async def idle(args: argparse.Namespace) -> dict[str, object]:
    with router(args, "--header-timeout-s", str(args.header_timeout)) as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        before = memory_mb(proc.pid)
        queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        half = args.idle // 2
        wait_s = args.header_timeout + 5
        helpers = [
            multiprocessing.Process(target=_hold_idle, args=(port, n, wait_s, queue))
            for n in (half, args.idle - half)
        ]
        for helper in helpers:
            helper.start()
        opened = sum(queue.get(timeout=300)[1] for _ in helpers)
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=10) as client:
            health = await client.get(url + "/healthz")
        health_s = time.monotonic() - started
        during = memory_mb(proc.pid)
        closed = sum(queue.get(timeout=300)[1] for _ in helpers)
        for helper in helpers:
            helper.join(10)
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
    return {
        "attack": f"{args.idle} idle connections",
        "opened": opened,
        "healthz_status": health.status_code,
        "healthz_ms": round(health_s * 1000, 1),
        "closed_by_router_after_s": wait_s,
        "closed": closed,
        "router_fds_after": fds,
        "rss_before_mb": round(before[0], 1),
        "rss_during_mb": round(during[0], 1),
    }


ATTACKS = {"chunked": chunked, "held": held, "idle": idle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attacks", nargs="+", choices=sorted(ATTACKS))
    parser.add_argument("--chunked-mb", type=int, default=300)
    parser.add_argument("--held", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=20_000)
    parser.add_argument("--header-timeout", type=float, default=10.0)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--pythonpath", default="")
    parser.add_argument("--log", default="/tmp/router-attacks.log")
    args = parser.parse_args()
    for name in args.attacks:
        print(json.dumps(asyncio.run(ATTACKS[name](args))), flush=True)


if __name__ == "__main__":
    main()
