"""Sample grids of held-out subjects: reference | base | personalized | HM-CFG, from a short Euler sampler."""
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hypernet import PerSampleLoRA, PredictedLoRA, hm_cfg

from .base_model import FrozenBase

log = logging.getLogger(__name__)

STEPS = 12  # Euler steps over evenly spaced training sigmas: cheap, and enough to compare columns across a run
S_TEXT = 5.0
S_SUBJECT = 3.0


def euler(base: FrozenBase, noise: Tensor, eps: callable) -> Tensor:
    """Integrate dx/dσ = ε(x, σ) from the largest training σ to 0."""
    sigmas = base.model_sampling.sigmas
    index = torch.linspace(len(sigmas) - 1, 0, STEPS, device=sigmas.device).round().long()
    sigmas = torch.cat([sigmas[index], sigmas.new_zeros(1)])
    x = noise * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + eps(x, sigma.expand(len(x))) * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_grid(base: FrozenBase, lora: PredictedLoRA, references: Tensor, captions: list[str],
                seed: int) -> Image.Image:
    """One row per subject: its reference image, then samples from the same noise with CFG on the base model, CFG on
    the personalized model, and HM-CFG (base uncond and cond, personalized cond)."""
    k, size = len(captions), references.shape[1]
    text = base.encode_text([""] * k + captions)  # [uncond | cond]
    text_hm_cfg = base.encode_text([""] * k + captions + captions)  # [base uncond | base cond | personalized cond]
    latent_size = base.encode_images(references[:1]).shape[1:]
    noise = torch.randn((k, *latent_size), generator=torch.Generator().manual_seed(seed)).to(base.device)

    def eps_base(x, sigma):
        u, c = base.predict(x.repeat(2, 1, 1, 1), sigma.repeat(2), text).chunk(2)
        return u + (c - u) * S_TEXT

    def eps_personalized(x, sigma):
        with PerSampleLoRA(base.diffusion_model, lora) as injected:
            injected.rows = list(range(k)) * 2  # [personalized uncond | personalized cond]
            u, c = base.predict(x.repeat(2, 1, 1, 1), sigma.repeat(2), text).chunk(2)
        return u + (c - u) * S_TEXT

    def eps_hm_cfg(x, sigma):
        with PerSampleLoRA(base.diffusion_model, lora) as injected:
            injected.rows = [-1] * (2 * k) + list(range(k))
            out = base.predict(x.repeat(3, 1, 1, 1), sigma.repeat(3), text_hm_cfg)
        return hm_cfg(*out.chunk(3), s_text=S_TEXT, s_subject=S_SUBJECT)

    columns = [references.cpu(), *(base.decode_latents(euler(base, noise, eps))
                                   for eps in (eps_base, eps_personalized, eps_hm_cfg))]
    grid = torch.cat([torch.cat([c[i] for c in columns], dim=1) for i in range(k)], dim=0)  # rows of 4 images
    assert grid.shape == (k * size, len(columns) * size, 3)
    return Image.fromarray((grid.numpy() * 255).round().astype(np.uint8))


def save_grid(image: Image.Image, out_dir: Path, step: int) -> Path:
    """Write the grid as out_dir/samples/step_<step>.png."""
    path = out_dir / "samples" / f"step_{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    log.info("sample grid: %s", path)
    return path
