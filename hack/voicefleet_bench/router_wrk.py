"""The router's overhead measured by a load tool that is not ours: ``wrk`` (Debian's).

One simulated pod (speed factor 10000: synthesis ≈ 0 s, ``pcm`` answers of ~30 KB for the
short text) and one router in front of it, each pinned to a core of its own with
``taskset`` (``--router-cpu``, ``--pod-cpu``); ``wrk`` runs on the pod's core, so the router's
core does nothing but route. Optionally a second router, ``--before PATH``: another checkout
(e.g. ``git archive`` of an older commit) run by this venv's Python, so before and after are
measured side by side against the same pod.

Each run, interleaved so that drift on a shared machine hits every path alike:

1. latency: ``wrk -c 1`` (one request at a time) direct to the pod, then through each
   router; p50 and p99 from ``wrk --latency``; added p50 = routed - direct, in that run;
2. capacity: ``wrk -c CONNECTIONS`` direct, then through each router; requests completed
   divided by the router process's CPU seconds over the same interval (``/proc``) gives
   requests per second per router core, whatever else the machine runs.

Medians over ``--runs``. Needs ``wrk`` on the PATH (``apt-get install wrk``). On a machine
shared with other benchmarks, run it under their lock: ``flock /tmp/vf/bench.lock ...``.

    .venv/bin/python -m voicefleet_bench.router_wrk --before /tmp/before   # writes docs/router.md
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from voicefleet_bench import router_common
from voicefleet_bench.machine import loadavg, machine_note
from voicefleet_bench.procs import (
    Command,
    cpu_seconds,
    exit_cleanly_on_sigterm,
    free_port,
    processes,
    router_under,
)
from voicefleet_bench.report import write_section

TEXT = "Hello there."
LUA = f"""-- one short OpenAI speech request; VF_MODEL names the voice (router) or the model (pod)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{{"model": "' .. os.getenv("VF_MODEL") .. '", "input": "{TEXT}", '
  .. '"voice": "default", "response_format": "pcm"}}'
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failed: int
    """Non-2xx answers plus socket errors: any makes the run invalid."""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """The figures of ``wrk --latency`` output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", out)
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s*99%\s+(\S+)", out, re.M)
    if done is None or p50 is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    failed = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        failed += sum(int(n) for n in errors.groups())
    return WrkResult(
        int(done.group(1)),
        _ms(done.group(2) + done.group(3)) / 1e3,
        _ms(p50.group(1)),
        _ms(p99.group(1)),
        failed,
    )


def wrk(
    url: str, model: str, *, connections: int, seconds: float, cpu: int, lua: Path
) -> WrkResult:
    argv = ["taskset", "-c", str(cpu), "wrk", "-t", "1", "-c", str(connections)]
    argv += ["-d", f"{seconds:g}s", "--timeout", "30s", "--latency", "-s", str(lua)]
    argv.append(url + "/v1/audio/speech")
    out = subprocess.run(
        argv, env={**os.environ, "VF_MODEL": model}, capture_output=True, text=True, check=True
    ).stdout
    result = parse_wrk(out)
    if result.failed:
        raise RuntimeError(f"{result.failed} failed requests to {url}:\n{out}")
    return result


def pinned(cpu: int, command: Command) -> Command:
    argv, env, port = command
    return ["taskset", "-c", str(cpu), *argv], env, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--capacity-seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--router-cpu", type=int, default=0)
    parser.add_argument("--pod-cpu", type=int, default=1)
    parser.add_argument(
        "--before", type=Path, help="another checkout's root: its router measured beside"
    )
    parser.add_argument("--before-label", default="before")
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    exit_cleanly_on_sigterm()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 1

    lua = Path(tempfile.mkdtemp(prefix="voicefleet-wrk-")) / "speech.lua"
    lua.write_text(LUA)
    pod_port = free_port()
    pod = pinned(
        args.pod_cpu,
        router_common.simulated_pod(pod_port, speed_factor=10_000, jitter=0.0, seed=1),
    )
    pod_url = f"http://127.0.0.1:{pod_port}"
    routers: list[tuple[str, Command]] = []
    port = free_port()
    routers.append(("now", pinned(args.router_cpu, router_common.router(port, [pod_url]))))
    if args.before is not None:
        port = free_port()
        path = os.pathsep.join(str(args.before / d) for d in ("inference", "crds"))
        argv, env = router_under(
            sys.executable, path, port, *router_common.static_upstreams([pod_url])
        )
        routers.append((args.before_label, pinned(args.router_cpu, (argv, env, port))))

    names = [name for name, _ in routers]
    p50: dict[str, list[float]] = {n: [] for n in ["direct", *names]}
    p99: dict[str, list[float]] = {n: [] for n in ["direct", *names]}
    rate: dict[str, list[float]] = {n: [] for n in ["direct", *names]}
    per_core: dict[str, list[float]] = {n: [] for n in names}
    added: dict[str, list[float]] = {n: [] for n in names}
    with (
        processes([pod]),
        processes([command for _, command in routers]) as started,
    ):
        targets = [("direct", pod_url, "tts-1", None)] + [
            (name, url, "joe", proc.pid)
            for (name, _), (proc, url) in zip(routers, started, strict=True)
        ]

        def load(url: str, model: str, connections: int, seconds: float) -> WrkResult:
            return wrk(
                url, model, connections=connections, seconds=seconds, cpu=args.pod_cpu, lua=lua
            )

        for _name, url, model, _ in targets:  # warm connections and code paths
            load(url, model, args.connections, 1)
        for run in range(args.runs):
            order = targets if run % 2 == 0 else [targets[0], *reversed(targets[1:])]
            for name, url, model, _ in order:
                result = load(url, model, 1, args.latency_seconds)
                p50[name].append(result.p50_ms)
                p99[name].append(result.p99_ms)
            for name in names:
                added[name].append(p50[name][-1] - p50["direct"][-1])
            for name, url, model, pid in order:
                cpu0 = cpu_seconds(pid) if pid else 0.0
                result = load(url, model, args.connections, args.capacity_seconds)
                rate[name].append(result.requests / result.seconds)
                if pid:
                    per_core[name].append(result.requests / max(cpu_seconds(pid) - cpu0, 1e-9))
            print(
                f"run {run + 1}: direct p50 {p50['direct'][-1]:.2f} ms; "
                + "; ".join(
                    f"{n} p50 {p50[n][-1]:.2f} ms (+{added[n][-1]:.2f}, p99 {p99[n][-1]:.1f}), "
                    f"{per_core[n][-1]:.0f} req/s per router core"
                    for n in names
                )
                + f"; load {loadavg()}",
                flush=True,
            )
            time.sleep(0.5)

    med = statistics.median
    columns = ["direct to the pod", *(f"router ({n})" for n in names)]
    keys = ["direct", *names]
    lines = [
        "Command: `flock /tmp/vf/bench.lock .venv/bin/python -m voicefleet_bench.router_wrk "
        + shlex.join(sys.argv[1:])
        + "`: wrk 4.1 (Debian) with a Lua script POSTing a short request "
        f"(`{TEXT}`, `pcm`, ~30 KB answers) to one simulated pod (speed factor 10000); "
        f"router pinned to CPU {args.router_cpu}, pod and wrk to CPU {args.pod_cpu}; latency "
        f"with 1 connection for {args.latency_seconds:g} s, capacity with {args.connections} "
        f"connections for {args.capacity_seconds:g} s; {args.runs} interleaved runs, medians. "
        + (
            f"`{args.before_label}`: the router of the checkout at `{args.before}`, same pod. "
            if args.before
            else ""
        )
        + f"{machine_note()}.",
        "",
        "| figure | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        "| p50 latency, 1 connection | " + " | ".join(f"{med(p50[k]):.2f} ms" for k in keys) + " |",
        "| p99 latency, 1 connection | " + " | ".join(f"{med(p99[k]):.2f} ms" for k in keys) + " |",
        "| **added p50** (target ≤ 1.5 ms) | — | "
        + " | ".join(
            f"**{med(added[n]):.2f} ms** ({'met' if med(added[n]) <= 1.5 else 'NOT met'})"
            for n in names
        )
        + " |",
        f"| requests/s, {args.connections} connections | "
        + " | ".join(f"{med(rate[k]):.0f}" for k in keys)
        + " |",
        "| **requests/s per router core** (target ≥ 1,000) | — | "
        + " | ".join(
            f"**{med(per_core[n]):.0f}** ({'met' if med(per_core[n]) >= 1000 else 'NOT met'})"
            for n in names
        )
        + " |",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        write_section(router_common.DOC, "wrk", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
