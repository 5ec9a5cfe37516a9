"""Measuring helpers shared by the benchmarks: interleaved timing ratios a noisy machine cannot fool, and memory.

A shared machine can run one block of repeats at half the speed of the next, so the kinds being compared are timed
in one process, one call of each per round, the order rotated round by round; each round gives a ratio to the
reference kind, and the report is the median of those per-round ratios with their range.
"""
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Timing:
    """One kind's median seconds per call, and the median and range of its per-round ratios to the reference."""

    seconds: float
    ratio: float
    ratio_min: float
    ratio_max: float

    def ratio_text(self) -> str:
        return f"{self.ratio:.3g}× ({self.ratio_min:.3g}–{self.ratio_max:.3g})"


def interleaved(kinds: dict[str, Callable[[], object]], rounds: int, reference: str) -> dict[str, Timing]:
    """Time each of `kinds` once per round, order rotated each round, after one warm-up call of each."""
    if reference not in kinds:
        raise ValueError(f"the reference kind {reference!r} is not among {sorted(kinds)}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(kinds)
    for name in names:
        kinds[name]()
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            kinds[name]()
            seconds[name].append(time.perf_counter() - start)
    timings = {}
    for name in names:
        ratios = [s / ref for s, ref in zip(seconds[name], seconds[reference])]
        timings[name] = Timing(statistics.median(seconds[name]), statistics.median(ratios), min(ratios), max(ratios))
    return timings


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of a process in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")
