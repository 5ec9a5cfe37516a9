"""The benchmarks: interleaved timing that a machine slowing down mid-run cannot fool, and each script at tiny size."""
import re
import subprocess
import sys

import pytest

from bench import measure
from bench.harness.comfy_runtime import REPO


def fake_clock(monkeypatch, cost: dict[str, float], slowdown_from_call: int = 10**9):
    """Kinds that take `cost` seconds each on a fake clock, all twice as slow from call `slowdown_from_call` on."""
    clock, calls = [0.0], []

    def kind(name):
        def call():
            calls.append(name)
            clock[0] += cost[name] * (2.0 if len(calls) > slowdown_from_call else 1.0)
        return call

    monkeypatch.setattr(measure.time, "perf_counter", lambda: clock[0])
    return {name: kind(name) for name in cost}, calls


def test_each_round_times_every_kind_once_in_a_rotated_order_after_a_warm_up(monkeypatch):
    kinds, calls = fake_clock(monkeypatch, {"a": 1.0, "b": 3.0, "c": 2.0})
    timings = measure.interleaved(kinds, rounds=3, reference="a")
    assert calls == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert timings["b"].seconds == 3.0 and timings["b"].ratio == 3.0
    assert timings["a"].ratio == timings["a"].ratio_min == timings["a"].ratio_max == 1.0


def test_a_machine_that_slows_down_mid_run_moves_the_times_but_not_the_ratios(monkeypatch):
    kinds, _ = fake_clock(monkeypatch, {"plain": 1.0, "fast": 1.5}, slowdown_from_call=8)
    timings = measure.interleaved(kinds, rounds=6, reference="plain")
    assert timings["fast"].ratio == timings["fast"].ratio_min == timings["fast"].ratio_max == 1.5
    assert timings["plain"].seconds == 1.5  # the median of three rounds at 1 s and three at 2 s


def test_an_unknown_reference_or_no_rounds_is_refused(monkeypatch):
    kinds, _ = fake_clock(monkeypatch, {"a": 1.0})
    with pytest.raises(ValueError, match="reference kind 'b' is not among"):
        measure.interleaved(kinds, rounds=2, reference="b")
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        measure.interleaved(kinds, rounds=0, reference="a")


def run_benchmark(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def ratios(output: str) -> dict[str, float]:
    """Row label → median ratio, from a benchmark's markdown table."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^\| ([^|]+?) \|[^|]*\| ([\d.]+)× \(", output, re.MULTILINE)}


def test_the_hmcfg_benchmark_runs_each_path_at_tiny_size():
    found = ratios(run_benchmark("bench.hmcfg_speed", "--rounds", "2"))
    assert set(found) == {"plain CFG", "HM-CFG fast path", "HM-CFG general path"}
    assert found["plain CFG"] == 1.0 and all(r > 0 for r in found.values())


def test_the_personalization_benchmark_runs_at_tiny_size():
    found = ratios(run_benchmark("bench.predict_speed", "--rounds", "2"))
    assert set(found) == {"one CFG step", "embedded CNN (128 px)"} and found["embedded CNN (128 px)"] > 0


def test_the_training_benchmark_runs_on_a_replaced_unet_with_gradient_checkpointing():
    output = run_benchmark("bench.train_speed", "--unet", "tiny", "--rounds", "1", "--batch", "2",
                           "--grad-checkpointing")
    found = ratios(output)
    assert set(found) == {"plain UNet forward+backward", "the same with per-sample LoRAs",
                          "whole hypernet training step"}
    assert "gradient checkpointing on" in output
