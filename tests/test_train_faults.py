"""Trainer faults: SIGKILL at random moments, checkpoint writes included; every time the latest checkpoint loads
and --resume continues. A loss spike stops the run before it writes anything, keeping the last good checkpoint."""
import dataclasses
import math
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import hypernet
from train import trainer
from train.base_model import FrozenBase
from train.state import read_resume

from train_runs import REPO, SUBPROCESS_ENV, command_line, log_records, tiny_config

TRIALS = 10
SPIKE = 1e5  # the forced jump of the denoising loss, far beyond any batch-to-batch noise


@pytest.fixture(scope="module")
def base(comfy_root, checkpoints) -> FrozenBase:
    return FrozenBase.load(str(checkpoints["sd15_tiny_clip.safetensors"]), torch.device("cpu"))


def logged_steps(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def start(cfg, resume: bool, stderr) -> subprocess.Popen:
    flags = ["--resume=true"] if resume else []
    return subprocess.Popen([sys.executable, "-m", "train", *command_line(cfg), *flags], cwd=REPO,
                            env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=stderr)


@pytest.mark.slow
def test_ten_kills_at_random_moments_always_leave_a_loadable_checkpoint_that_resumes(data_dir, checkpoints,
                                                                                      tmp_path):
    # a checkpoint after every step, so that many kills land while one is being written
    cfg = tiny_config(data_dir, checkpoints, tmp_path / "run", max_steps=10_000, ckpt_every=1, lr=1e-3)
    out, rng = Path(cfg.out_dir), random.Random(0)
    log, stderr_path = out / "log.jsonl", tmp_path / "trainer.stderr"
    checkpoint_steps = []
    for trial in range(TRIALS):
        with open(stderr_path, "w") as stderr:
            process = start(cfg, resume=trial > 0, stderr=stderr)
        before, deadline = logged_steps(log), time.monotonic() + 300
        # the run is in its loop, past its first checkpoint (resume file, then hypernet file)
        while logged_steps(log) <= before or not (out / "hypernet.safetensors").exists():
            assert process.poll() is None, stderr_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no training step within 300 s"
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.0))  # somewhere in a step or a checkpoint write
        process.kill()
        process.wait()
        document, _ = read_resume(str(out / "resume.safetensors"))
        net, _ = hypernet.load(str(out / "hypernet.safetensors"))
        assert len(net.config.targets) == 8
        checkpoint_steps.append(document["step"])
    assert checkpoint_steps == sorted(checkpoint_steps) and checkpoint_steps[-1] > checkpoint_steps[0]
    final = checkpoint_steps[-1] + 2
    finished = subprocess.run([sys.executable, "-m", "train", *command_line(cfg), "--resume=true",
                               f"--stop_at={final}"], cwd=REPO, env=SUBPROCESS_ENV, capture_output=True, text=True,
                              timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert read_resume(str(out / "resume.safetensors"))[0]["step"] == final


def spiking_at_call(n: int, mse_loss):
    """torch's mse_loss, SPIKE times larger on its n-th call: one step's denoising loss jumps, through the real code."""
    calls = []

    def spiking(*args, **kwargs):
        calls.append(None)
        return mse_loss(*args, **kwargs) * (SPIKE if len(calls) == n else 1.0)

    return spiking


def test_a_loss_spike_stops_the_run_saying_what_jumped_and_leaves_the_last_good_checkpoint_untouched_and_resumable(
        data_dir, checkpoints, base, tmp_path, monkeypatch, caplog):
    cfg = tiny_config(data_dir, checkpoints, tmp_path / "run", max_steps=12, ckpt_every=4, lr=1e-3,
                      divergence_window=4)
    out = Path(cfg.out_dir)
    # steps 1–4 and the checkpoint of step 4, which carries the guard's full window into the resumed run
    assert trainer.train(dataclasses.replace(cfg, stop_at=4), base=base)["step"] == 4
    good = {name: (out / name).read_bytes() for name in (trainer.HYPERNET_FILE, trainer.RESUME_FILE)}

    monkeypatch.setattr(torch.nn.functional, "mse_loss", spiking_at_call(3, torch.nn.functional.mse_loss))
    with caplog.at_level("ERROR", logger="train.trainer"), pytest.raises(SystemExit) as stopped:
        trainer.main([*command_line(cfg), "--resume=true"])  # steps 5, 6, then the spike at step 7
    monkeypatch.undo()
    assert stopped.value.code == 1
    jump = re.search(r"the denoising loss jumped to mse = ([\d.e+]+), \d+ times its median ([\d.e+-]+) over the last "
                     r"4 steps \(divergence_factor 100\) at step 7 of the run configured by the command line; "
                     r"stopped before updating the weights, with no checkpoint of this state, and in .* the checkpoint "
                     r"of step 4 is kept, the last good one\. Lower lr .* then continue with --resume", caplog.text)
    assert jump, caplog.text
    assert float(jump[1]) > 100 * float(jump[2])
    assert {name: (out / name).read_bytes() for name in good} == good  # nothing written after the jump
    net, metadata = hypernet.load(str(out / trainer.HYPERNET_FILE))
    assert len(net.config.targets) == 8 and metadata["training"]["step"] == 4

    # the advice works: the same run resumes from step 4 at a lower learning rate
    assert trainer.train(dataclasses.replace(cfg, resume=True, lr=5e-4, stop_at=8), base=base)["step"] == 8
    records = log_records(cfg)
    assert [r["step"] for r in records] == list(range(1, 9)) and all(math.isfinite(r["loss"]) for r in records)
    assert read_resume(str(out / trainer.RESUME_FILE))[0]["config"]["lr"] == 5e-4


def test_the_divergence_guard_lets_a_noisy_but_stable_loss_and_a_weight_l2_growing_from_zero_pass():
    rng = np.random.default_rng(0)
    guard = trainer.DivergenceGuard(factor=100.0, window=50, recent={})
    # the weight L2 grows from exactly 0 (zero-initialized up heads) as (Σ lr)², with lr warming up over 100 steps
    lr_sum = np.concatenate([[0.0], np.cumsum(np.minimum(1.0, np.arange(1, 3000) / 100))])
    for step in range(3000):
        mse = (0.05 + 0.25 * math.exp(-step / 500)) * rng.lognormal(0.0, 1.0)  # single batches vary some 30×
        reg = (1e-3 * lr_sum[step]) ** 2 * rng.lognormal(0.0, 0.3)
        assert guard.check({"loss": mse + 0.01 * reg, "mse": mse, "reg": reg}) is None, (step, mse, reg)
    jump = guard.check({"loss": 0.05 + 0.01 * 24_632.0, "mse": 0.05, "reg": 24_632.0})  # the spike that lost a run
    assert jump is not None and jump.startswith("the weight L2 (regularizer) jumped to reg = 24632, "), jump


def test_a_divergence_factor_of_zero_stops_only_on_a_nan_or_infinite_loss():
    guard = trainer.DivergenceGuard(factor=0.0, window=4, recent={"mse": [0.1] * 4, "reg": [1.0] * 4})
    assert guard.check({"loss": 1e9, "mse": 1e9, "reg": 1e9}) is None
    assert guard.check({"loss": math.nan, "mse": math.nan, "reg": 1.0}) == "loss is nan (mse nan, reg 1.0)"


def test_the_divergence_guard_checks_only_for_nan_until_its_window_is_full():
    guard = trainer.DivergenceGuard(factor=100.0, window=4, recent={"mse": [0.1] * 3, "reg": [1.0] * 3})
    assert guard.check({"loss": 1e6, "mse": 1e6, "reg": 1.0}) is None  # the 4th value: no median to compare with
    assert guard.check({"loss": 1e6, "mse": 1e6, "reg": 1.0}) == (
        "the denoising loss jumped to mse = 1e+06, 10000000 times its median 0.1 over the last 4 steps "
        "(divergence_factor 100)")
    assert guard.check({"loss": math.inf, "mse": 0.1, "reg": math.inf}).startswith("loss is inf")
