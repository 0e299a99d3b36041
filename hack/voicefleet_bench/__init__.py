"""VoiceFleet's benchmarks, one module each, and the pieces they share.

Dev-only: installed editable with the ``hack`` distribution (``make install``), never part
of the product wheel. Run a benchmark as ``python -m voicefleet_bench.<name>``; ``make bench``
runs the ones whose tables live in ``docs/``.

Shared pieces, so that every benchmark starts, measures and reports the same way:

- :mod:`voicefleet_bench.procs` -- free ports, starting and stopping processes, CPU and memory
  of a pid;
- :mod:`voicefleet_bench.stats` -- percentiles and medians;
- :mod:`voicefleet_bench.machine` -- what the figures were measured on (cores, load, versions);
- :mod:`voicefleet_bench.report` -- writing a table between markers in a ``docs/`` page.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The checkout the benchmarks run from (``hack/`` is installed editable, so this is it)."""
