"""Helpers shared by the trainer's tests: a tiny run's config, a fixed batch and its losses, the run's log, and
the same run as a command line for subprocesses."""
import json
import os
from pathlib import Path

import torch

import hypernet
from train import trainer
from train.base_model import FrozenBase
from train.config import TrainConfig
from train.data import PairDataset, collate, scan_subjects, split_held_out

REPO = Path(__file__).resolve().parent.parent
TINY_NET = dict(d_model=32, n_layers=1, n_heads=2, token_dim=32, encoder_width=16)


def tiny_config(data_dir: Path, checkpoints: dict, out_dir: Path, **overrides) -> TrainConfig:
    """A tiny net, 10 steps of batch 4 at a high learning rate, no EMA, every step logged; with overrides."""
    values = dict(data_dir=str(data_dir), base_checkpoint=str(checkpoints["sd15_tiny_clip.safetensors"]),
                  out_dir=str(out_dir), held_out=1, batch_size=4, max_steps=10, warmup_steps=0, lr=3e-3,
                  reg_lambda=0.0, ema_decay=0.0, log_every=1, ckpt_every=1000, sample_every=0, **TINY_NET)
    return TrainConfig(**{**values, **overrides})


def fixed_batch(cfg: TrainConfig) -> dict:
    """Every training image once, with fixed sample seeds: fixed references, crops, noise and timesteps."""
    subjects, _ = scan_subjects(cfg.data_dir, cfg.class_word, cfg.on_bad_image, report=False)
    dataset = PairDataset(split_held_out(subjects, cfg.held_out)[0], cfg.image_size, cfg.flip, cfg.crop == "random")
    return collate([dataset[(i, 1000 + i)] for i in range(len(dataset))])


def losses_on(net: hypernet.HyperNet, base: FrozenBase, batch: dict) -> tuple[float, float]:
    """(denoising MSE, mean weight L2) of `net`'s LoRAs on `batch`."""
    with torch.no_grad(), trainer.batch_losses(trainer.SubjectToLoRA(net), base, batch) as losses:
        return losses["mse"].item(), losses["reg"].item()


def log_records(cfg: TrainConfig) -> list[dict]:
    return [json.loads(line) for line in (Path(cfg.out_dir) / "log.jsonl").read_text().splitlines()]


def command_line(cfg: TrainConfig) -> list[str]:
    """`--key=value` for every field that differs from the defaults."""
    defaults = TrainConfig().to_dict()
    return [f"--{k}={v}" for k, v in cfg.to_dict().items() if v != defaults[k]]


SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
