"""A voice's measured service, from its pods' cumulative counters: the first-audio model's inputs.

Pure: no clock, no I/O. Pods export cumulative counters (``voicefleet_api.load.PodCounters``:
requests offered, service seconds and their squares, histograms of the time to first
audio); a rate or a mean is the difference between two readings of the same pod. The
loop adds each tick's readings (:meth:`ServiceWindows.add`) and asks for one
:class:`~voicefleet_operator.scaling.ServiceMeasure` per voice (:meth:`ServiceWindows.measure`):

- **arrival rate**: requests offered per second over the last ``rate_window`` seconds
  (short, so a step shows within seconds), summed over the voice's pods;
- **service** (mean, squared coefficient of variation, start-to-first-audio at the
  target percentile) and **observed** first audio (share within the target, the
  percentile's seconds) over the last ``service_window`` seconds (long, so a few
  paragraphs among many phrases are in it).

A reading below the previous one (the pod's process restarted) starts that pod afresh.
A pod's first reading is only a baseline: it adds nothing until the next one, so an
operator that starts never mistakes a pod's lifetime totals for the last seconds.
Percentiles of histograms are interpolated linearly within a bucket, as Prometheus'
``histogram_quantile`` does.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from voicefleet_api.load import Buckets, PodCounters
from voicefleet_operator.scaling import ServiceMeasure

__all__ = [
    "DEFAULT_SERVICE_WINDOW_SECONDS",
    "ServiceWindows",
    "quantile",
    "share_at_most",
]

DEFAULT_SERVICE_WINDOW_SECONDS: Final = 120.0
"""Seconds of service the mean and variability are measured over."""


def quantile(buckets: Buckets, q: float) -> float | None:
    """The ``q`` quantile (0..1) of cumulative ``buckets``; None when they count nothing.

    Beyond the last finite bound it answers that bound (a lower bound of the truth).
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    low, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > below:
            if math.isinf(bound):
                return low
            return low + (bound - low) * (rank - below) / (count - below)
        low, below = (bound if not math.isinf(bound) else low), count
    return low


def share_at_most(buckets: Buckets, seconds: float) -> float | None:
    """Share (0..1) of observations at most ``seconds``; None when they count nothing."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    low, below = 0.0, 0.0
    for bound, count in buckets:
        if seconds <= bound:
            if math.isinf(bound):
                return below / total
            return (below + (count - below) * (seconds - low) / (bound - low)) / total
        low, below = bound, count
    return below / total


def _minus(a: Buckets, b: Buckets) -> Buckets:
    if [x for x, _ in a] != [x for x, _ in b]:
        return a  # the pod changed its buckets (a new version): its totals, not a difference
    return tuple((x, max(0.0, ca - cb)) for (x, ca), (_, cb) in zip(a, b, strict=True))


def _plus(a: Buckets, b: Buckets) -> Buckets:
    if not a:
        return b
    if [x for x, _ in a] != [x for x, _ in b]:
        return a  # mixed bucket layouts: keep the first pod's rather than guess
    return tuple((x, ca + cb) for (x, ca), (_, cb) in zip(a, b, strict=True))


def _restarted(new: PodCounters, old: PodCounters) -> bool:
    return new.offered < old.offered or new.served < old.served


@dataclass
class ServiceWindows:
    """Recent readings of every pod's counters (see the module docstring)."""

    rate_window: float = 10.0
    burst_window: float = 3.0
    """The short window of ``ServiceMeasure.recent_arrival_rate`` (a step's first seconds)."""
    service_window: float = DEFAULT_SERVICE_WINDOW_SECONDS
    _history: dict[str, deque[tuple[float, PodCounters]]] = field(default_factory=dict)

    def add(self, uid: str, now: float, counters: PodCounters) -> None:
        """One reading of pod ``uid``; older ones than the service window are dropped,
        except the last of them (the window's baseline)."""
        kept = self._history.setdefault(uid, deque())
        if kept and _restarted(counters, kept[-1][1]):
            kept.clear()
        kept.append((now, counters))
        while len(kept) > 1 and kept[1][0] <= now - self.service_window:
            kept.popleft()

    def retain(self, uids: Iterable[str]) -> None:
        """Forget pods not in ``uids`` (gone pods must not pile up)."""
        keep = set(uids)
        for uid in [u for u in self._history if u not in keep]:
            del self._history[uid]

    @staticmethod
    def _rate(kept: deque[tuple[float, PodCounters]], now: float, window: float) -> float:
        """Offered requests per second since the oldest reading within ``window`` (else the
        one before the last)."""
        t1, last = kept[-1]
        recent = [(t, r) for t, r in kept if now - window <= t < t1]
        t0, base = recent[0] if recent else kept[-2]
        return (last.offered - base.offered) / (t1 - t0) if t1 > t0 else 0.0

    def measure(
        self, uids: Iterable[str], now: float, target: float, percentile: float
    ) -> ServiceMeasure | None:
        """What the pods ``uids`` measured; None until one of them has two readings."""
        rate = burst = 0.0
        served = total = squares = 0.0
        starts: Buckets = ()
        firsts: Buckets = ()
        seen = False
        for uid in uids:
            kept = self._history.get(uid)
            if not kept or len(kept) < 2:
                continue
            seen = True
            last = kept[-1][1]
            base = kept[0][1]
            rate += self._rate(kept, now, self.rate_window)
            burst += self._rate(kept, now, self.burst_window)
            served += last.served - base.served
            total += last.service_sum - base.service_sum
            squares += last.service_squares - base.service_squares
            starts = _plus(starts, _minus(last.start_to_first_audio, base.start_to_first_audio))
            firsts = _plus(firsts, _minus(last.first_audio, base.first_audio))
        if not seen:
            return None
        mean = total / served if served > 0 else 0.0
        scv = max(0.0, squares / served / mean**2 - 1.0) if mean > 0 else 1.0
        return ServiceMeasure(
            arrival_rate=max(0.0, rate),
            recent_arrival_rate=max(0.0, burst),
            mean_service=mean,
            scv=scv,
            start_to_first_audio=quantile(starts, percentile) or 0.0,
            served=round(served),
            observed_within=share_at_most(firsts, target),
            observed_seconds=quantile(firsts, percentile),
        )
