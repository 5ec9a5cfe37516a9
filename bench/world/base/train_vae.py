"""Train ComfyUI's TAESD as a plain autoencoder on miniature-world renders (64 px), resumably.

    python -m bench.world.base.train_vae [--steps N] [--resume]

Most steps see 32×32 crops (aligned to the 8-px latent grid: 4× cheaper, same local statistics), the last ones
whole 64 px images. The TAESD keeps its raw latents; at every save `vae_scale`/`vae_shift` are calibrated so
that ComfyUI's latent (encode() × SD15 scale 0.18215, as `process_latent_in` does) has mean 0 and std 1.
"""
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..subjects import split_subjects
from train.state import load_optimizer, optimizer_tensors

from .common import (CACHE, append_jsonl, import_comfy, load_state, parse_config, psnr, render_batch, save_state,
                     setup_logging)

log = logging.getLogger(__name__)
SD15_LATENT_SCALE = 0.18215  # comfy.latent_formats.SD15.scale_factor


@dataclass(frozen=True)
class VAEConfig:
    """Everything that defines a TAESD training run; stored in its checkpoint."""

    steps: int = field(default=1600, metadata={"help": "optimizer steps in total"})
    batch_crop: int = field(default=32, metadata={"help": "batch size of the 32 px crop phase"})
    batch_full: int = field(default=16, metadata={"help": "batch size of the full 64 px phase"})
    full_from: float = field(default=0.8, metadata={"help": "fraction of steps after which whole images are used"})
    lr: float = field(default=5e-4, metadata={"help": "peak Adam learning rate (cosine decay to 1%); 2e-3 collapsed"})
    warmup: int = field(default=100, metadata={"help": "linear warm-up steps"})
    l1_weight: float = field(default=0.5, metadata={"help": "weight of the L1 term next to the MSE"})
    seed: int = field(default=0, metadata={"help": "init and data seed"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    save_every_s: float = field(default=180.0, metadata={"help": "checkpoint at least this often (seconds)"})
    eval_images: int = field(default=128, metadata={"help": "held-out images for PSNR"})
    out: str = field(default=str(CACHE / "vae_state.safetensors"), metadata={"help": "checkpoint path"})


def new_taesd(seed: int):
    """A fresh TAESD; ComfyUI's ops skip init, so every weight is drawn explicitly."""
    from comfy.taesd.taesd import TAESD

    from ...tiny_checkpoints import init_fan_in_

    return init_fan_in_(TAESD(), torch.Generator().manual_seed(seed)).to(memory_format=torch.channels_last)


def reconstruct(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw latents, reconstruction) of [0, 1] images: TAESD's encoder and decoder work on [0, 1] directly."""
    latents = vae.taesd_encoder(images)
    return latents, vae.taesd_decoder(latents)


def vae_loss(vae, images: torch.Tensor, l1_weight: float) -> torch.Tensor:
    """MSE (what PSNR measures) plus L1 (sharper edges)."""
    _, out = reconstruct(vae, images)
    return F.mse_loss(out, images) + l1_weight * F.l1_loss(out, images)


def training_batch(config: VAEConfig, step: int, subjects) -> torch.Tensor:
    """Deterministic per step (so a resumed run sees the same data): crops early, whole images late."""
    rng = np.random.default_rng([config.seed, step])
    full = step >= config.full_from * config.steps
    images, _ = render_batch(subjects, config.batch_full if full else config.batch_crop, rng)
    if full:
        return images
    y, x = (int(v) * 8 for v in rng.integers(0, 5, size=2))
    return images[:, :, y:y + 32, x:x + 32].contiguous()


def learning_rate(config: VAEConfig, step: int) -> float:
    """Linear warm-up, then cosine from lr to lr/100."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    t = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@torch.no_grad()
def evaluate(vae, images: torch.Tensor) -> dict:
    """Held-out PSNR and the raw latent statistics used for calibration."""
    vae.eval()
    latents, out = zip(*(reconstruct(vae, chunk) for chunk in images.split(32)))
    vae.train()
    latents = torch.cat(latents)
    return {"psnr": psnr(torch.cat(out), images), "latent_mean": latents.mean().item(),
            "latent_std": latents.std().item(), "latent_absmax": latents.abs().max().item()}


def calibrate_(vae, latent_mean: float, latent_std: float):
    """Set vae_scale/shift so encode(x) × 0.18215 ≈ N(0, 1); decode() inverts it exactly."""
    with torch.no_grad():
        vae.vae_scale.fill_(latent_std * SD15_LATENT_SCALE)
        vae.vae_shift.fill_(-latent_mean / (latent_std * SD15_LATENT_SCALE))
    return vae


def held_out_images(config: VAEConfig) -> torch.Tensor:
    """A fixed set of renders of held-out subjects."""
    _, held_out = split_subjects()
    images, _ = render_batch(held_out, config.eval_images, np.random.default_rng([config.seed, 10**9]))
    return images


def save(path, config, vae, optimizer, step, metrics) -> None:
    """Checkpoint with a calibrated TAESD state (ready for ComfyUI) plus the optimizer state for --resume."""
    calibrate_(vae, metrics["latent_mean"], metrics["latent_std"])
    save_state(path, {"config": dataclasses.asdict(config), "step": step, "metrics": metrics,
                      "optimizer_param_groups": optimizer.state_dict()["param_groups"]},
               {"model": vae.state_dict(), "optimizer": optimizer_tensors(optimizer)})
    log.info("saved %s at step %d: %s", path, step, metrics)


def main(argv=None) -> None:
    config, resume = parse_config(VAEConfig, argv, __doc__)
    out = CACHE.__class__(config.out)
    setup_logging(out.with_suffix(".log"))
    torch.set_num_threads(config.threads)
    import_comfy()
    subjects, _ = split_subjects()
    eval_images = held_out_images(config)

    vae = new_taesd(config.seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)
    start = 0
    if resume and out.exists():
        document, state = load_state(out)
        vae.load_state_dict(state["model"])
        load_optimizer(optimizer, state["optimizer"], document["optimizer_param_groups"])
        start = document["step"]
        log.info("resumed from %s at step %d", out, start)
    vae.vae_scale.requires_grad_(False)
    vae.vae_shift.requires_grad_(False)

    curve = out.with_suffix(".jsonl")
    last_save, t0, seen = time.time(), time.time(), 0
    for step in range(start, config.steps):
        images = training_batch(config, step, subjects)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        loss = vae_loss(vae, images.contiguous(memory_format=torch.channels_last), config.l1_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(images)
        if step % 20 == 0:
            rate = seen / (time.time() - t0)
            append_jsonl(curve, {"step": step, "loss": loss.item(), "px": images.shape[-1], "images_per_s": rate})
            log.info("step %d loss %.5f (%d px, %.1f img/s)", step, loss.item(), images.shape[-1], rate)
        if time.time() - last_save > config.save_every_s or step == config.steps - 1:
            metrics = evaluate(vae, eval_images)
            append_jsonl(curve, {"step": step + 1, **metrics})
            save(out, config, vae, optimizer, step + 1, metrics)
            last_save = time.time()


if __name__ == "__main__":
    main()
