"""Every setting of the inference server: one typed field, one CLI flag, one env var.

The operator writes these environment variables into the pod spec, so their names are a
contract (see ``docs/server.md``). Precedence: command-line flag, then environment
variable, then the default. Defaults that depend on the machine (intra-op threads, batch
size) are resolved here, once, and printed by ``voicefleet-server --help`` as the values
this machine would get.

Why the CPU defaults are what they are (measured, see ``docs/engines.md``):

* one worker with all cores as onnxruntime intra-op threads beats several single-threaded
  workers on throughput and halves each request's latency, and workers x threads above the
  core count only makes threads fight, so that product is refused;
* dynamic batching gains nothing on CPU (a padded batch of 4 ran 0.75 times as fast as the same
  requests one by one), so ``max_batch_size`` defaults to 1 there and 8 on CUDA, where a
  single sentence leaves the device mostly idle.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

__all__ = [
    "LOG_LEVELS",
    "Settings",
    "SettingsError",
    "available_cores",
    "build_parser",
    "load_settings",
]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_DEVICE: Final = re.compile(r"^(cpu|cuda(:\d+)?)$")
_CGROUP_CPU_MAX: Final = Path("/sys/fs/cgroup/cpu.max")


class SettingsError(ValueError):
    """A setting has a value the server cannot run with; the message names the setting."""


def available_cores(cgroup_cpu_max: Path = _CGROUP_CPU_MAX) -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota.

    ``os.cpu_count()`` reports the node's cores, but a pod limited to 2 CPUs on a 64-core
    node must not start 64 intra-op threads. A fractional quota rounds down (at least 1),
    as Go's automaxprocs does: rounding up would oversubscribe the quota.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _default_threads(workers: int, cores: int) -> int:
    return max(1, cores // max(1, workers))


def _default_batch(device: str) -> int:
    return 8 if device.startswith("cuda") else 1


@dataclass(frozen=True, slots=True)
class Settings:
    """The resolved configuration of one server process (validated on construction).

    ``Settings()`` is the default configuration for this machine; :func:`load_settings`
    builds one from argv and the environment.
    """

    host: str = "0.0.0.0"
    """Address to listen on; 0.0.0.0 in pods (the kubelet probes the pod IP)."""
    port: int = 8080
    engine: str = "piper-onnx"
    model: str = "en_US-joe-medium"
    """A bundled voice name, or a path to a Piper ``.onnx`` with its ``.onnx.json``."""
    device: str = "cpu"
    workers: int = 1
    """Engine worker threads; each owns its own engine instance (never shared)."""
    threads_per_worker: int = field(default_factory=lambda: _default_threads(1, available_cores()))
    """onnxruntime intra-op threads per worker."""
    max_queue: int = 64
    """Requests accepted and waiting; beyond it, 429 with Retry-After."""
    max_batch_size: int = 1
    batch_window_ms: float = 5.0
    """How long a worker waits after the first queued request for others to batch with."""
    request_timeout_s: float = 120.0
    """Queue wait plus synthesis, per request."""
    drain_grace_s: float = 30.0
    """On SIGTERM, how long accepted requests may take to finish."""
    max_input_chars: int = 4096
    log_level: str = "info"
    cores: int = field(default_factory=available_cores, compare=False)
    """Cores this process may use (resolved, not a flag): the bound for workers x threads."""

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise SettingsError("; ".join(problems))

    @property
    def intra_op_threads(self) -> int:
        """Alias of :attr:`threads_per_worker` under the engine's own name for it."""
        return self.threads_per_worker

    @property
    def batch_window_s(self) -> float:
        return self.batch_window_ms / 1000.0

    def summary(self) -> str:
        """The one-line startup summary."""
        return (
            f"model={self.model} engine={self.engine} device={self.device} "
            f"workers={self.workers}x{self.threads_per_worker} threads (cores={self.cores}) "
            f"max_batch={self.max_batch_size} window={self.batch_window_ms:g}ms "
            f"queue={self.max_queue} timeout={self.request_timeout_s:g}s "
            f"drain_grace={self.drain_grace_s:g}s max_input={self.max_input_chars}"
        )


def _problems(s: Settings) -> list[str]:
    """Every invalid value, named by its env var, so one failed start shows them all."""
    out: list[str] = []

    def need(ok: bool, env: str, message: str) -> None:
        if not ok:
            out.append(f"{env}: {message}")

    need(bool(s.host), "VOICEFLEET_HOST", "must not be empty")
    need(1 <= s.port <= 65535, "VOICEFLEET_PORT", f"must be 1..65535, got {s.port}")
    need(bool(s.engine), "VOICEFLEET_ENGINE", "must not be empty")
    need(bool(s.model), "VOICEFLEET_MODEL", "must not be empty")
    need(
        _DEVICE.match(s.device) is not None,
        "VOICEFLEET_DEVICE",
        f"must be cpu, cuda or cuda:N, got {s.device!r}",
    )
    need(1 <= s.workers <= 64, "VOICEFLEET_WORKERS", f"must be 1..64, got {s.workers}")
    need(
        s.threads_per_worker >= 1,
        "VOICEFLEET_THREADS_PER_WORKER",
        f"must be >= 1, got {s.threads_per_worker}",
    )
    need(s.max_queue >= 1, "VOICEFLEET_MAX_QUEUE", f"must be >= 1, got {s.max_queue}")
    need(
        1 <= s.max_batch_size <= 256,
        "VOICEFLEET_MAX_BATCH_SIZE",
        f"must be 1..256, got {s.max_batch_size}",
    )
    need(
        0 <= s.batch_window_ms <= 1000 and math.isfinite(s.batch_window_ms),
        "VOICEFLEET_BATCH_WINDOW_MS",
        f"must be 0..1000, got {s.batch_window_ms}",
    )
    need(
        0 < s.request_timeout_s <= 3600,
        "VOICEFLEET_REQUEST_TIMEOUT_S",
        f"must be in (0, 3600], got {s.request_timeout_s}",
    )
    need(
        0 <= s.drain_grace_s <= 3600,
        "VOICEFLEET_DRAIN_GRACE_S",
        f"must be 0..3600, got {s.drain_grace_s}",
    )
    need(
        1 <= s.max_input_chars <= 100_000,
        "VOICEFLEET_MAX_INPUT_CHARS",
        f"must be 1..100000, got {s.max_input_chars}",
    )
    need(
        s.log_level in LOG_LEVELS,
        "VOICEFLEET_LOG_LEVEL",
        f"must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}",
    )
    if s.device == "cpu" and s.workers * s.threads_per_worker > s.cores:
        out.append(
            f"VOICEFLEET_WORKERS x VOICEFLEET_THREADS_PER_WORKER = {s.workers} x "
            f"{s.threads_per_worker} exceeds the {s.cores} core(s) available; threads would "
            "fight for cores and every request would slow down. Lower one of them."
        )
    return out


# -- command line and environment -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Option:
    dest: str
    flags: tuple[str, ...]
    envs: tuple[str, ...]
    """Environment variables, most specific first (the first one set wins)."""
    parse: Callable[[str], Any]
    help: str
    default_text: str
    metavar: str


def _positive_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _lower(text: str) -> str:
    return text.strip().lower()


def _options(cores: int) -> tuple[_Option, ...]:
    d = Settings.__dataclass_fields__
    threads_default = _default_threads(1, cores)
    return (
        _Option(
            "host",
            ("--host",),
            ("VOICEFLEET_HOST",),
            str,
            "address to listen on",
            str(d["host"].default),
            "ADDR",
        ),
        _Option(
            "port",
            ("--port",),
            ("VOICEFLEET_PORT", "PORT"),
            _positive_int,
            "TCP port (VOICEFLEET_PORT wins over PORT)",
            str(d["port"].default),
            "N",
        ),
        _Option(
            "engine",
            ("--engine",),
            ("VOICEFLEET_ENGINE",),
            str,
            "engine implementation",
            str(d["engine"].default),
            "NAME",
        ),
        _Option(
            "model",
            ("--model",),
            ("VOICEFLEET_MODEL",),
            str,
            "voice model: a bundled voice name or a path to a Piper .onnx (with .onnx.json)",
            str(d["model"].default),
            "NAME|PATH",
        ),
        _Option(
            "device",
            ("--device",),
            ("VOICEFLEET_DEVICE",),
            _lower,
            "cpu, cuda or cuda:N",
            str(d["device"].default),
            "DEV",
        ),
        _Option(
            "workers",
            ("--workers",),
            ("VOICEFLEET_WORKERS",),
            _positive_int,
            "engine worker threads, each owning its own engine instance",
            str(d["workers"].default),
            "N",
        ),
        _Option(
            "threads_per_worker",
            ("--threads-per-worker", "--threads"),
            ("VOICEFLEET_THREADS_PER_WORKER",),
            _positive_int,
            "onnxruntime intra-op threads per worker; on CPU workers x threads may not exceed "
            "the cores",
            f"cores // workers = {threads_default} here ({cores} core(s))",
            "N",
        ),
        _Option(
            "max_queue",
            ("--max-queue",),
            ("VOICEFLEET_MAX_QUEUE",),
            _positive_int,
            "requests waiting at most; beyond it 429 with Retry-After",
            str(d["max_queue"].default),
            "N",
        ),
        _Option(
            "max_batch_size",
            ("--max-batch-size",),
            ("VOICEFLEET_MAX_BATCH_SIZE",),
            _positive_int,
            "requests run together in one engine call (dynamic batching); batching measured "
            "no gain on CPU",
            "1 on cpu, 8 on cuda",
            "N",
        ),
        _Option(
            "batch_window_ms",
            ("--batch-window-ms",),
            ("VOICEFLEET_BATCH_WINDOW_MS",),
            _number,
            "how long a worker waits after the first queued request for more to batch",
            f"{d['batch_window_ms'].default:g}",
            "MS",
        ),
        _Option(
            "request_timeout_s",
            ("--request-timeout-s",),
            ("VOICEFLEET_REQUEST_TIMEOUT_S",),
            _number,
            "per-request limit on queue wait plus synthesis (then 504)",
            f"{d['request_timeout_s'].default:g}",
            "S",
        ),
        _Option(
            "drain_grace_s",
            ("--drain-grace-s",),
            ("VOICEFLEET_DRAIN_GRACE_S",),
            _number,
            "on SIGTERM/SIGINT, time accepted requests get to finish before exit",
            f"{d['drain_grace_s'].default:g}",
            "S",
        ),
        _Option(
            "max_input_chars",
            ("--max-input-chars",),
            ("VOICEFLEET_MAX_INPUT_CHARS",),
            _positive_int,
            "longest accepted text, in characters",
            str(d["max_input_chars"].default),
            "N",
        ),
        _Option(
            "log_level",
            ("--log-level",),
            ("VOICEFLEET_LOG_LEVEL",),
            _lower,
            f"one of {', '.join(LOG_LEVELS)} (debug also logs every request)",
            str(d["log_level"].default),
            "LEVEL",
        ),
    )


def build_parser(cores: int | None = None) -> argparse.ArgumentParser:
    """The ``voicefleet-server`` argument parser; its help lists every env var and default."""
    cores = available_cores() if cores is None else cores
    parser = argparse.ArgumentParser(
        prog="voicefleet-server",
        description=(
            "VoiceFleet inference server: one TTS voice over HTTP (OpenAI /v1/audio/speech, "
            "GPT-SoVITS-compatible /tts, /healthz, /readyz, /metrics). Every flag can also be "
            "set by the environment variable shown; a flag wins over its variable."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Drain: on SIGTERM or SIGINT /readyz turns 503 at once, new requests get 503, "
        "accepted ones finish within the drain grace, then the process exits 0. "
        "A model that fails to load exits 1; with $VOICEFLEET_TERMINATION_MESSAGE_PATH set "
        "(the operator sets /dev/termination-log), the reason is also written there as one "
        "line, which Kubernetes shows as the container's termination message.",
    )
    for opt in _options(cores):
        envs = " or ".join(f"${e}" for e in opt.envs)
        parser.add_argument(
            *opt.flags,
            dest=opt.dest,
            default=None,
            metavar=opt.metavar,
            help=f"{opt.help} [env {envs}; default: {opt.default_text}]",
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    cores: int | None = None,
) -> Settings:
    """Settings from flags, then environment, then defaults; raises :class:`SettingsError`.

    ``--help`` exits through argparse as usual. ``cores`` overrides detection (tests).
    """
    cores = available_cores() if cores is None else cores
    env = os.environ if environ is None else environ
    parser = build_parser(cores)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    errors: list[str] = []
    for opt in _options(cores):
        raw: object = args.get(opt.dest)
        source = opt.flags[0]
        if raw is None:
            for name in opt.envs:
                if env.get(name, "") != "":
                    raw, source = env[name], name
                    break
        if raw is None:
            continue
        try:
            values[opt.dest] = opt.parse(str(raw))
        except ValueError as exc:
            errors.append(f"{source}: {exc}")
    if errors:
        raise SettingsError("; ".join(errors))
    device = str(values.get("device", "cpu"))
    values.setdefault("max_batch_size", _default_batch(device))
    values.setdefault("threads_per_worker", _default_threads(int(values.get("workers", 1)), cores))
    values["cores"] = cores
    known = {f.name for f in fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in known})
