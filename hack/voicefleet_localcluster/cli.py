"""`voicefleet-cluster build|up|down|status|stack-up|stack-down` — the developer entry points.

`up` starts a cluster whose processes outlive this command (they run in their
own sessions) and records them in `<state-dir>/state.json`; `down` reads that
file back. The admin kubeconfig goes to `<state-dir>/kubeconfig`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from voicefleet_localcluster import binaries, preflight
from voicefleet_localcluster.controlplane import (
    DEFAULT_NODE,
    ClusterStartError,
    ClusterState,
    ControlPlane,
    stop_cluster,
)
from voicefleet_localcluster.preflight import PreflightError
from voicefleet_localcluster.procs import alive, has_marker, start_in_keeper


def _say(line: str) -> None:
    print(f"[voicefleet-cluster] {line}", file=sys.stderr, flush=True)


def _state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def cmd_build(args: argparse.Namespace) -> int:
    started = time.monotonic()
    tools = [
        ensure
        for wanted, ensure in (
            (args.promtool, binaries.ensure_promtool),
            (args.seaweedfs, binaries.ensure_seaweedfs),
        )
        if wanted
    ]
    if tools:
        for ensure in tools:
            try:
                print(ensure(log=_say))
            except RuntimeError as exc:
                _say(f"error: {exc}")
                return 1
        return 0
    if not args.node:
        directory = binaries.ensure_binaries()
        _say(f"ready in {time.monotonic() - started:.0f}s: {directory}")
        print(directory)
        return 0
    from voicefleet_localcluster import imagebuild, prepare

    try:
        built = prepare.build_node_parts(_say)
        imagebuild.load_built(built, _say)
    except (RuntimeError, imagebuild.ImageBuildError) as exc:
        _say(f"error: {exc}")
        return 1
    _say(f"the node's binaries and images ready in {time.monotonic() - started:.0f}s")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    state_file = _state_file(state_dir)
    if state_file.exists():
        old = ClusterState.load(state_file)
        if any(alive(p) and has_marker(p, old.cluster_id) for p in old.pids.values()):
            _say(f"a cluster is already running (see {state_file}); run `down` first")
            return 1
        stop_cluster(old)  # stale state from a crash: clean its leftovers
        state_file.unlink(missing_ok=True)
    bin_dir = binaries.ensure_binaries()
    plane = ControlPlane(
        bin_dir=bin_dir,
        kubeconfig_path=state_dir / "kubeconfig",
        node_name=args.node_name,
        gpus=args.gpus,
    )
    try:
        preflight.check()  # before forking: the error belongs to this command
        state = start_kept(plane, state_file, args.timeout)
    except (ClusterStartError, PreflightError, RuntimeError) as exc:
        _say(str(exc))
        return 1
    _say(f"control plane up in {state.started_seconds:.1f}s at {state.server}")
    _say(f"logs: {state.work_dir / 'logs'}   pod logs: {state.pod_logs_dir}")
    print(f"export KUBECONFIG={state.kubeconfig}")
    print(f"export PATH={bin_dir}:$PATH   # kubectl, helm")
    return 0


def start_kept(plane: ControlPlane, state_file: Path, timeout: float) -> ClusterState:
    """Start the cluster from a keeper process that stays to reap it (`procs.start_in_keeper`)."""

    def start() -> str:
        state = plane.start(timeout=timeout)
        state.save(state_file)
        return str(state_file)

    return ClusterState.load(Path(start_in_keeper(start)))


def cmd_down(args: argparse.Namespace) -> int:
    state_file = _state_file(args.state_dir.resolve())
    if not state_file.exists():
        _say(f"no cluster recorded in {state_file}; nothing to stop")
        return 0
    state = ClusterState.load(state_file)
    started = time.monotonic()
    stop_cluster(state)
    state_file.unlink(missing_ok=True)
    _say(f"cluster {state.cluster_id} stopped in {time.monotonic() - started:.1f}s")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_file = _state_file(args.state_dir.resolve())
    if not state_file.exists():
        print("down")
        return 3
    state = ClusterState.load(state_file)
    healthy = True
    print(f"cluster {state.cluster_id}  server {state.server}  kubeconfig {state.kubeconfig}")
    for name, pid in state.pids.items():
        up = alive(pid) and has_marker(pid, state.cluster_id)
        healthy &= up
        print(
            f"  {name:<24} pid {pid:<8} {'running' if up else 'DEAD'}  log {state.logs.get(name)}"
        )
    return 0 if healthy else 1


def cmd_stack_up(args: argparse.Namespace) -> int:
    from voicefleet_localcluster import stack

    return stack.up(args.state_dir, timeout=args.timeout)


def cmd_stack_down(args: argparse.Namespace) -> int:
    from voicefleet_localcluster import stack

    return stack.down(args.state_dir, say=lambda line: _say(line))


def cmd_promtool(_: argparse.Namespace) -> int:
    print(binaries.ensure_promtool(log=_say))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicefleet-cluster",
        description="Local Kubernetes built from Go modules, on a real node (kubelet, containerd).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="build the binaries into the cache (skipped if cached)")
    build.add_argument(
        "--node",
        action="store_true",
        help="also kube-router and the images, loaded into the node's containerd: everything "
        "`up` and the cluster tests need (make test runs this first)",
    )
    build.add_argument(
        "--seaweedfs",
        action="store_true",
        help="only SeaweedFS's `weed` (the S3 server of the model-fetch tests; minutes cold)",
    )
    build.add_argument(
        "--promtool",
        action="store_true",
        help="only promtool (the chart's alert-rule tests; minutes cold); with --seaweedfs, "
        "promtool first",
    )
    build.set_defaults(func=cmd_build)

    # Every command that acts on a recorded cluster takes the same --state-dir.
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".cluster"),
        help="where state.json and kubeconfig live (default: ./.cluster)",
    )
    up = sub.add_parser(
        "up",
        parents=[state],
        help="start the control plane and the node: kubelet + containerd + runc, kube-proxy, "
        "CoreDNS (needs root)",
    )
    up.add_argument("--node-name", default=DEFAULT_NODE)
    up.add_argument("--gpus", type=int, default=4, help="nvidia.com/gpu capacity of the node")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for readiness")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser(
        "down", parents=[state], help="stop every process of the cluster and remove its data"
    )
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", parents=[state], help="show the recorded cluster's processes")
    status.set_defaults(func=cmd_status)

    stack_up = sub.add_parser(
        "stack-up",
        parents=[state],
        help="`make up`: cluster + helm install of the chart + the sample voice, Ready",
    )
    stack_up.add_argument("--timeout", type=float, default=600.0, help="seconds per long step")
    stack_up.set_defaults(func=cmd_stack_up)

    stack_down = sub.add_parser(
        "stack-down", parents=[state], help="`make down`: stop everything `stack-up` made"
    )
    stack_down.set_defaults(func=cmd_stack_down)

    promtool = sub.add_parser("promtool", help="build promtool (cached); print its path")
    promtool.set_defaults(func=cmd_promtool)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
