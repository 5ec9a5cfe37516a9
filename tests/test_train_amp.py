"""Mixed precision: bf16 and fp16 autocast (fp16 with loss scaling) run, export float32 weights, and an fp16 run
resumes exactly, loss scale included. On the CPU here; the same code path runs on GPUs."""
from pathlib import Path

import pytest
import safetensors.torch
import torch

import hypernet
from train import trainer

from train_runs import log_records, tiny_config


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_a_half_precision_run_trains_and_exports_float32_weights(amp, data_dir, checkpoints, tmp_path):
    cfg = tiny_config(data_dir, checkpoints, tmp_path / amp, amp=amp, max_steps=4)
    trainer.train(cfg)
    records = log_records(cfg)
    assert len(records) == 4 and all(torch.isfinite(torch.tensor([r["loss"], r["reg"]])).all() for r in records)
    net, metadata = hypernet.load(str(Path(cfg.out_dir) / "hypernet.safetensors"))
    weights = list(net.state_dict().values())
    assert all(w.dtype == torch.float32 and w.isfinite().all() for w in weights)
    assert metadata["training"]["config"]["amp"] == amp


def test_an_fp16_run_stopped_and_resumed_equals_an_uninterrupted_one(data_dir, checkpoints, tmp_path):
    whole = tiny_config(data_dir, checkpoints, tmp_path / "whole", amp="fp16", max_steps=6)
    trainer.train(whole)
    parts = tiny_config(data_dir, checkpoints, tmp_path / "parts", amp="fp16", max_steps=6, stop_at=3)
    trainer.train(parts)
    trainer.train(tiny_config(data_dir, checkpoints, tmp_path / "parts", amp="fp16", max_steps=6, resume=True))

    ours = safetensors.torch.load_file(str(tmp_path / "parts" / "hypernet.safetensors"))
    reference = safetensors.torch.load_file(str(tmp_path / "whole" / "hypernet.safetensors"))
    assert ours.keys() == reference.keys()
    for key in ours:
        assert torch.equal(ours[key], reference[key]), key
    assert [r["loss"] for r in log_records(parts)] == [r["loss"] for r in log_records(whole)]
