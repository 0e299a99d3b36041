"""The router's CPU when nothing happens, against N pods: what its load signal costs.

One asyncio process plays every pod (a listening socket per pod on loopback) and answers
``GET /metrics`` with a real server's metrics page (rendered by the server's own metrics
module, with every histogram present) and ``GET /load`` with the compact line; it counts
each. A real ``voicefleet-router`` process with the pods as static upstreams then idles
for ``--seconds``; its CPU comes from ``/proc/<pid>/stat``. ``--python``/``--pythonpath``
run another checkout (an older commit exported with ``git archive``) for a before/after.

    .venv/bin/python hack/voicefleet_bench/router_idle.py --pods 1 10 25 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

import httpx

from voicefleet_bench.procs import HOST, cpu_seconds, free_port, router_under


def _metrics_page() -> bytes:
    from voicefleet_inference.metrics import create_metrics, render

    metrics = create_metrics()
    for value in (0.2, 0.9, 2.5):
        metrics.request_duration_seconds.observe(value)
        metrics.time_to_first_audio_seconds.observe(value / 3)
    metrics.requests_total.labels(code="200").inc(3)
    return render(metrics)


class FakePods:
    """Every pod in one process: tells pods apart by the port that was dialled."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.hits: dict[str, int] = {"/metrics": 0, "/load": 0, "other": 0}
        self.page = _metrics_page()
        self.servers: list[asyncio.Server] = []
        self.ports: list[int] = []
        self.seq = 0
        self.open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        """The connections being served, by the task serving each."""

    async def start(self) -> None:
        for _ in range(self.count):
            server = await asyncio.start_server(self._serve, HOST, 0)
            self.servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.open[task] = writer
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                if path == "/metrics":
                    body, kind = self.page, b"text/plain; version=0.0.4"
                elif path == "/load":
                    self.seq += 1  # a real pod numbers every report
                    line = f"work_s=0.000,depth=0,in_flight=0,seq={self.seq},free=64"
                    body, kind = line.encode(), b"text/plain"
                else:
                    body, kind = b"{}", b"application/json"
                self.hits[path if path in self.hits else "other"] += 1
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: "
                    + kind
                    + b"\r\ncontent-length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            del self.open[task]
            writer.close()

    async def stop(self) -> None:
        """Stop listening, close every connection and wait until each is served out: a
        connection task still waiting for a request when the loop ends would be cancelled
        by ``asyncio.run``, which Python 3.11's streams report as an unhandled error."""
        for server in self.servers:
            server.close()
        for writer in self.open.values():
            writer.close()  # the serving task reads EOF and returns
        if self.open:
            await asyncio.wait(list(self.open), timeout=10)
        for server in self.servers:
            await server.wait_closed()


async def measure(args: argparse.Namespace, pods: int) -> dict[str, object]:
    fake = FakePods(pods)
    await fake.start()
    port = free_port()
    upstreams = [f"--static-upstreams=joe=http://{HOST}:{p}" for p in fake.ports]
    argv, env = router_under(args.python, args.pythonpath, port, *upstreams)
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for by polling
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if (await client.get(f"http://{HOST}:{port}/healthz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("router did not start")
                await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # past start-up
        hits_before = dict(fake.hits)
        cpu_before = cpu_seconds(proc.pid)
        started = time.monotonic()
        await asyncio.sleep(args.seconds)
        wall = time.monotonic() - started
        cpu = cpu_seconds(proc.pid) - cpu_before
        hits = {k: fake.hits[k] - hits_before[k] for k in fake.hits}
    finally:
        proc.terminate()
        proc.wait(10)
        await fake.stop()
    return {
        "pods": pods,
        "router_cores": round(cpu / wall, 4),
        "millicores_per_pod": round(1000 * cpu / wall / pods, 2),
        "metrics_requests_per_pod_s": round(hits["/metrics"] / wall / pods, 2),
        "load_requests_per_pod_s": round(hits["/load"] / wall / pods, 2),
        "seconds": round(wall, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[1, 10, 25])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--pythonpath", default="")
    args = parser.parse_args()
    for pods in args.pods:
        print(json.dumps(await measure(args, pods)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
