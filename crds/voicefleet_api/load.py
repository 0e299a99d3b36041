"""The pod load contract, read in one place: the router and the autoscaler both use it.

A pod's load is three numbers (the contract gauges of :mod:`voicefleet_api.metric_names`): the
engine-seconds of work queued and running (``voicefleet_queue_work_seconds``), the
requests waiting (``voicefleet_queue_depth``) and the requests running
(``voicefleet_requests_in_flight``). They reach readers in three forms, all parsed here so
that two readers can never disagree about what a pod said:

- **Prometheus text** (``GET /metrics``): :func:`parse_metrics`. Samples may carry labels
  (a server that labels its gauges by voice, a proxy that adds a pod label); every sample
  of a family counts, summed, so a labelled page and an unlabelled one read the same.
- **The load header** on every response of a pod (``x-voicefleet-load``), written at the
  start of streamed responses too: :func:`format_load` / :func:`parse_load`. It lets the
  router learn a pod's load from the answers it gets anyway, with no extra request.
- **The compact load endpoint** (``GET /load``): the same one-line text as the header, so
  a poll costs a few dozen bytes instead of a rendered Prometheus page. Asked as
  :func:`wait_path` (``/load?wait=S&after=N``) it is a long-poll: answered as soon as the
  load differs from report ``after`` (``seq`` N), else after ``S`` seconds; an answer that
  held carries :data:`LOAD_WAIT_HEADER` (a pod that cannot hold, or an older one, answers
  at once without it, and the reader polls instead).
- **Service counters** (``GET /metrics`` only): :func:`parse_counters`, the cumulative
  counts a first-audio target's queueing model is fitted to (arrivals, service times,
  first audio). Only voices with such a target are read this way.

The compact form is ``work_s=1.250,depth=3,in_flight=1,seq=42,free=61``; ``free`` (the
queue slots left before the pod answers 429) is optional. ``seq`` grows by one
with every load the pod writes (per process), so a reader can drop an older report that
arrived after a newer one (two responses racing back). It restarts at 1 with the process:
a reader accepts a lower ``seq`` once it has heard nothing for a while (a restart takes
longer than a response race). Unknown keys are ignored, so fields can be added later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final, NamedTuple

from voicefleet_api import metric_names

__all__ = [
    "LOAD_HEADER",
    "LOAD_PATH",
    "LOAD_WAIT_HEADER",
    "Buckets",
    "PodCounters",
    "PodLoad",
    "format_load",
    "parse_counters",
    "parse_load",
    "parse_metrics",
    "router_pending",
    "samples",
    "wait_path",
]

LOAD_HEADER: Final = "x-voicefleet-load"
"""Response header carrying the pod's load (contract): the compact form above."""

LOAD_PATH: Final = "/load"
"""The pod's compact load endpoint (contract): ``text/plain``, the compact form above."""

LOAD_WAIT_HEADER: Final = "x-voicefleet-load-wait"
"""On a ``/load`` answer that honoured ``wait`` (contract): the seconds it could hold."""


def wait_path(wait_s: float, after: int) -> str:
    """The long-poll's path: held up to ``wait_s`` while the load is that of report
    ``after`` (0: answered at once, still saying whether the pod can hold)."""
    return f"{LOAD_PATH}?wait={wait_s:g}&after={max(0, after)}"


_MAX_COMPACT: Final = 256
"""Longer compact text is refused unread (a reader never parses an unbounded header)."""


class PodLoad(NamedTuple):
    """One pod's load as it reported it."""

    work_s: float
    """Engine-seconds queued and running (never negative)."""
    depth: int
    """Requests accepted and waiting to run."""
    in_flight: int
    """Requests running in the engine."""
    seq: int = 0
    """The pod's report counter (0: unknown, e.g. read from ``/metrics``)."""
    free: int | None = None
    """Queue slots left before the pod refuses with 429 (None: not reported)."""


def format_load(load: PodLoad) -> str:
    """The compact text of a load (header value and ``/load`` body)."""
    text = (
        f"work_s={max(0.0, load.work_s):.3f},depth={max(0, load.depth)},"
        f"in_flight={max(0, load.in_flight)},seq={max(0, load.seq)}"
    )
    return text if load.free is None else f"{text},free={max(0, load.free)}"


def parse_load(text: str) -> PodLoad | None:
    """A load from its compact text; ``None`` when a number is missing or malformed."""
    if len(text) > _MAX_COMPACT:
        return None
    found: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep:
            found[key.strip()] = value.strip()
    try:
        work_s = float(found["work_s"])
        depth = int(found["depth"])
        in_flight = int(found["in_flight"])
        seq = int(found.get("seq", "0"))
        free = int(found["free"]) if "free" in found else None
    except (KeyError, ValueError):
        return None
    if not math.isfinite(work_s) or min(depth, in_flight, seq, free or 0) < 0:
        return None
    return PodLoad(max(0.0, work_s), depth, in_flight, seq, free)


def samples(text: str, names: Iterable[str]) -> dict[str, list[tuple[str, float]]]:
    """Samples of the named metrics in Prometheus text: ``{name: [(labels, value)]}``.

    A line scan rather than a full exposition parser: readers want a few gauges from a
    page that is mostly histogram buckets (prometheus-client's parser costs ~20x more).
    ``labels`` is the raw text between ``{`` and ``}`` ("" without labels); samples whose
    value is not a finite number are skipped.
    """
    wanted = tuple(names)
    out: dict[str, list[tuple[str, float]]] = {n: [] for n in wanted}
    for line in text.splitlines():
        if not line.startswith(wanted):
            continue
        if "{" in line:
            name, _, rest = line.partition("{")
            labels, _, tail = rest.rpartition("}")
        else:
            name, _, tail = line.partition(" ")
            labels = ""
        if name not in out:
            continue
        try:
            value = float(tail.split()[0])
        except (IndexError, ValueError):
            continue
        if math.isfinite(value):
            out[name].append((labels, value))
    return out


_GAUGES: Final = (
    metric_names.QUEUE_WORK_SECONDS,
    metric_names.QUEUE_DEPTH,
    metric_names.REQUESTS_IN_FLIGHT,
)


def parse_metrics(text: str) -> PodLoad | None:
    """A pod's load from its ``/metrics`` page; ``None`` if any of the three is absent.

    Each gauge is the sum of its samples, labelled or not.
    """
    found = samples(text, _GAUGES)
    if not all(found[name] for name in _GAUGES):
        return None

    def total(name: str) -> float:
        return sum(value for _, value in found[name])

    return PodLoad(
        max(0.0, total(metric_names.QUEUE_WORK_SECONDS)),
        max(0, int(total(metric_names.QUEUE_DEPTH))),
        max(0, int(total(metric_names.REQUESTS_IN_FLIGHT))),
    )


Buckets = tuple[tuple[float, float], ...]
"""A histogram's cumulative buckets: ``(upper bound, count)`` in ascending bounds, ``inf``
last."""


class PodCounters(NamedTuple):
    """A pod's cumulative service counters (since its process started)."""

    offered: float
    """Requests that reached admission: accepted or refused (429), any priority."""
    served: float
    """Requests that finished in an engine (``voicefleet_service_seconds_count``)."""
    service_sum: float
    """Their engine seconds, summed."""
    service_squares: float
    """Their engine seconds squared, summed."""
    start_to_first_audio: Buckets
    """``voicefleet_start_to_first_audio_seconds`` (no queueing in it)."""
    first_audio: Buckets
    """``voicefleet_time_to_first_audio_seconds`` (admission to first audio: the target's
    own measure)."""


_OUTCOMES_OFFERED: Final = ('outcome="accepted"', 'outcome="refused"')


def _label(labels: str, name: str) -> str | None:
    key = f'{name}="'
    start = labels.find(key)
    return None if start < 0 else labels[start + len(key) :].split('"', 1)[0]


def _buckets(found: list[tuple[str, float]]) -> Buckets:
    merged: dict[float, float] = {}
    for labels, value in found:
        le = _label(labels, "le")
        try:
            bound = float(le) if le is not None else math.nan
        except ValueError:
            continue
        if not math.isnan(bound):
            merged[bound] = merged.get(bound, 0.0) + value
    return tuple(sorted(merged.items()))


def parse_counters(text: str) -> PodCounters | None:
    """A pod's service counters from its ``/metrics`` page; ``None`` from a server that
    does not export service times (older than the first-audio target).

    Like the gauges, every labelled series of a family is summed.
    """
    service = metric_names.SERVICE_SECONDS
    names = (
        f"{metric_names.PRIORITY_REQUESTS}_total",
        f"{service}_count",
        f"{service}_sum",
        f"{metric_names.SERVICE_SECONDS_SQUARED}_total",
        f"{metric_names.START_TO_FIRST_AUDIO_SECONDS}_bucket",
        f"{metric_names.TIME_TO_FIRST_AUDIO_SECONDS}_bucket",
    )
    found = samples(text, names)
    if not found[f"{service}_count"] or not found[f"{service}_sum"]:
        return None

    def total(name: str) -> float:
        return sum(value for _, value in found[name])

    return PodCounters(
        offered=sum(
            value
            for labels, value in found[names[0]]
            if any(o in labels for o in _OUTCOMES_OFFERED)
        ),
        served=total(names[1]),
        service_sum=total(names[2]),
        service_squares=total(names[3]),
        start_to_first_audio=_buckets(found[names[4]]),
        first_audio=_buckets(found[names[5]]),
    )


def router_pending(text: str) -> dict[str, int]:
    """``{"namespace/name": held requests}`` from one router's ``/metrics`` page."""
    out: dict[str, int] = {}
    key = f'{metric_names.VOICE_LABEL_NAME}="'
    for labels, value in samples(text, (metric_names.ROUTER_PENDING_REQUESTS,))[
        metric_names.ROUTER_PENDING_REQUESTS
    ]:
        start = labels.find(key)
        if start < 0:
            continue
        voice = labels[start + len(key) :].split('"', 1)[0]
        out[voice] = out.get(voice, 0) + int(value)
    return out
