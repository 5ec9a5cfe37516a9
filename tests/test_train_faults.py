"""Trainer faults: SIGKILL at random moments, checkpoint writes included; every time the latest checkpoint loads
and --resume continues."""
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hypernet
from train.state import read_resume

from train_runs import REPO, SUBPROCESS_ENV, command_line, tiny_config

pytestmark = pytest.mark.slow

TRIALS = 10


def logged_steps(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def start(cfg, resume: bool, stderr) -> subprocess.Popen:
    flags = ["--resume=true"] if resume else []
    return subprocess.Popen([sys.executable, "-m", "train", *command_line(cfg), *flags], cwd=REPO,
                            env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=stderr)


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
