"""Per-subject LoRA fine-tuning (DreamBooth-style, of the hypernet's targets and rank): the classic baseline, and the
teachers of the weight-space loss. The same per-sample LoRA code and denoising loss as the trainer."""
import time

import torch
from torch import Tensor

from hypernet import PerSampleLoRA, PredictedLoRA, family_targets

from .base_model import FrozenBase
from .losses import denoising_loss

NOISE_DRAWS = 2  # (image, noise, timestep) draws per step
LEARNING_RATE = 1e-3
ADAM_EPS = 1e-8  # torch's default


def finetune_lora(base: FrozenBase, images: Tensor, captions: list[str], rank: int, alpha: float,
                  snapshots: tuple[int, ...], seed: int = 0, masks: Tensor | None = None,
                  subject_loss_weight: float = 0.0, lr: float = LEARNING_RATE,
                  adam_eps: float = ADAM_EPS) -> list[tuple[int, PredictedLoRA, float]]:
    """Optimize one LoRA on a subject's `images` (N×H×W×3 in [0, 1]) with their `captions` (and `masks`, N×H×W, for
    `subject_loss_weight`); (steps, LoRA, seconds since the start) at every step count in `snapshots`, from one run
    of max(snapshots) steps. `adam_eps` above the typical gradient makes directions the loss barely sees take small
    steps instead of Adam's unit-size ones (less run-to-run noise in the result).

    The initial LoRA, the noise and the timesteps come from `seed` alone, and the images are drawn from a generator
    of their own: runs with one seed start alike and see the same noise whatever their images, so that teachers of
    different subjects differ by their subjects only.
    """
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    picks = torch.Generator().manual_seed(seed)
    unet, device = base.diffusion_model, base.device
    family, targets = family_targets(unet)
    down = {t.name: (torch.randn(1, rank, t.in_features, generator=generator) / t.in_features ** 0.5)
            .to(device).requires_grad_() for t in targets}
    up = {t.name: torch.zeros(1, t.out_features, rank, device=device, requires_grad=True) for t in targets}
    lora = PredictedLoRA(targets, down, up, rank, alpha, family)
    optimizer = torch.optim.AdamW([*down.values(), *up.values()], lr=lr, eps=adam_eps, weight_decay=0.0)
    latents = base.encode_images(images)
    taken = []
    with PerSampleLoRA(unet, lora) as injected:
        injected.rows = [0] * NOISE_DRAWS
        for step in range(1, max(snapshots) + 1):
            drawn = torch.randint(len(images), (NOISE_DRAWS,), generator=picks)
            timesteps = torch.randint(base.num_timesteps, (NOISE_DRAWS,), generator=generator)
            sigma = base.model_sampling.sigmas[timesteps.to(device)]
            noise = torch.randn((NOISE_DRAWS, *latents.shape[1:]), generator=generator).to(device)
            x0 = latents[drawn.to(device)]
            x_noisy = base.model_sampling.noise_scaling(sigma, noise, x0)
            prediction = base.predict(x_noisy, sigma, base.encode_text([captions[i] for i in drawn]))
            loss = denoising_loss(prediction, base.target(noise, x0), None if masks is None else masks[drawn],
                                  subject_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step in snapshots:
                snapshot = PredictedLoRA(targets, {n: d.detach().clone() for n, d in down.items()},
                                         {n: u.detach().clone() for n, u in up.items()}, rank, alpha, lora.family)
                taken.append((step, snapshot, time.perf_counter() - started))
    return taken
