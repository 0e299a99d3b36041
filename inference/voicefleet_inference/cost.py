"""Estimate how many engine-seconds a request will take, before running it.

TTS cost grows with the length of the text (a VITS decoder's work is proportional
to the number of output frames), so a count of queued requests misleads both the
autoscaler and the router: ten one-word requests are cheaper than one paragraph.
The estimate feeds ``voicefleet_queue_work_seconds``.

The model is deliberately simple and pure: a fixed per-request overhead plus a
per-character rate, calibrated by the engine at load time by timing real
syntheses on the real device. Characters (not phonemes) are used so that the
estimate can be made on the event-loop thread at admission without phonemizing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CostModel:
    """``seconds = overhead_seconds + seconds_per_char * len(text) / speed``.

    Speaking faster produces fewer frames; the decoder dominates, so cost scales
    roughly with ``1 / speed`` for the per-character part.
    """

    overhead_seconds: float
    seconds_per_char: float

    def __post_init__(self) -> None:
        if self.overhead_seconds < 0 or self.seconds_per_char < 0:
            raise ValueError("cost model coefficients must be non-negative")

    def estimate(self, text: str, speed: float = 1.0) -> float:
        """Estimated engine-seconds for synthesizing ``text`` at ``speed``."""
        if speed <= 0:
            raise ValueError("speed must be positive")
        return self.overhead_seconds + self.seconds_per_char * len(text) / speed

    @classmethod
    def fit(cls, samples: list[tuple[int, float]]) -> CostModel:
        """Least-squares fit from ``(characters, seconds)`` measurements.

        Falls back to a pure per-character rate when the fit would give a negative
        overhead (noisy timings on a busy machine), so estimates stay positive.
        """
        if not samples:
            raise ValueError("need at least one measurement to calibrate")
        n = len(samples)
        mean_x = sum(x for x, _ in samples) / n
        mean_y = sum(y for _, y in samples) / n
        var_x = sum((x - mean_x) ** 2 for x, _ in samples)
        if var_x == 0:
            return cls(overhead_seconds=0.0, seconds_per_char=mean_y / max(mean_x, 1.0))
        slope = sum((x - mean_x) * (y - mean_y) for x, y in samples) / var_x
        intercept = mean_y - slope * mean_x
        if slope <= 0:
            return cls(overhead_seconds=0.0, seconds_per_char=mean_y / max(mean_x, 1.0))
        if intercept < 0:
            total_x = sum(x for x, _ in samples)
            total_y = sum(y for _, y in samples)
            return cls(overhead_seconds=0.0, seconds_per_char=total_y / max(total_x, 1))
        return cls(overhead_seconds=intercept, seconds_per_char=slope)


REFERENCE_COST: CostModel = CostModel(overhead_seconds=0.02, seconds_per_char=0.0045)
"""The bundled voice (``en_US-joe-medium``) on one CPU thread, as its load-time calibration
measures it (``docs/engines.md``). Used where no calibration can run: the ``simulated``
engine's default service time and the router's estimate of what a request will cost."""
