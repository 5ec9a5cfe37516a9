"""The per-subject baseline: a LoRA of the hypernet's rank and targets, optimized directly (DreamBooth-style) on one
reference image with the denoising loss, through the same per-sample LoRA code the trainer uses."""
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from hypernet import PerSampleLoRA, PredictedLoRA, find_targets, family_of
from train.base_model import FrozenBase

NOISE_DRAWS = 2  # noise and timestep draws of the one reference image per step
LEARNING_RATE = 1e-3


def finetune_lora(base: FrozenBase, reference: Tensor, caption: str, rank: int, alpha: float,
                  snapshots: tuple[int, ...], seed: int = 0) -> list[tuple[int, PredictedLoRA, float]]:
    """Optimize a LoRA on `reference` (H×W×3 in [0, 1]) captioned `caption`; (steps, LoRA, seconds since the start)
    at every step count in `snapshots`, from one run of max(snapshots) steps."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    unet = base.diffusion_model
    targets = find_targets(unet)
    down = {t.name: (torch.randn(1, rank, t.in_features, generator=generator) / t.in_features ** 0.5)
            .requires_grad_() for t in targets}
    up = {t.name: torch.zeros(1, t.out_features, rank, requires_grad=True) for t in targets}
    lora = PredictedLoRA(targets, down, up, rank, alpha, family_of(unet))
    optimizer = torch.optim.AdamW([*down.values(), *up.values()], lr=LEARNING_RATE, weight_decay=0.0)
    latent = base.encode_images(reference[None]).expand(NOISE_DRAWS, -1, -1, -1)
    text = base.encode_text([caption] * NOISE_DRAWS)
    taken = []
    with PerSampleLoRA(unet, lora) as injected:
        injected.rows = [0] * NOISE_DRAWS
        for step in range(1, max(snapshots) + 1):
            timesteps = torch.randint(base.num_timesteps, (NOISE_DRAWS,), generator=generator)
            sigma = base.model_sampling.sigmas[timesteps]
            noise = torch.randn(latent.shape, generator=generator)
            x_noisy = base.model_sampling.noise_scaling(sigma, noise, latent)
            loss = F.mse_loss(base.predict_noise(x_noisy, sigma, text), noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step in snapshots:
                snapshot = PredictedLoRA(targets, {n: d.detach().clone() for n, d in down.items()},
                                         {n: u.detach().clone() for n, u in up.items()}, rank, alpha, lora.family)
                taken.append((step, snapshot, time.perf_counter() - started))
    return taken
