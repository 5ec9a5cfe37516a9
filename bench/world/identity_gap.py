"""Does a hypernet convey identity? The denoising loss on held-out (reference, target) pairs in different contexts,
with each target's own reference, with the references shuffled between subjects, and with no LoRA at all.

    python -m bench.world.identity_gap --hypernet .cache/world/hyper/main/hypernet.safetensors [--pairs 256]

Fixed noise and timesteps per pair, so the three losses differ only by the LoRA. own < shuffled: the LoRA carries
something of the subject; own ≈ shuffled < none: only a subject-independent adjustment of the base model.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

import hypernet

from .base.common import CACHE, import_comfy
from .contexts import prompt
from .dataset import pairs
from .render import render
from .subjects import split_subjects


def pair_batch(n: int, seed: int) -> dict:
    """n held-out (reference, target) pairs as a trainer batch: images B×64×64×3, captions, sample seeds."""
    _, held_out = split_subjects()
    references, targets, captions = [], [], []
    for subject, reference, target in pairs(held_out, n, seed):
        references.append(render(subject, reference))
        targets.append(render(subject, target))
        captions.append(prompt(target))
    return {"reference": torch.from_numpy(np.stack(references).astype(np.float32)),
            "target": torch.from_numpy(np.stack(targets).astype(np.float32)), "caption": captions,
            "seed": torch.arange(n) + seed * 100_000}


@torch.no_grad()
def identity_gap(base, net: hypernet.HyperNet, batch: dict) -> dict[str, float]:
    """Denoising MSE with own references, shuffled references (rolled by one) and without a LoRA."""
    from train.trainer import SubjectToLoRA, batch_losses, sample_noise

    losses = {}
    for name, references in (("own", batch["reference"]), ("shuffled", batch["reference"].roll(1, 0))):
        with batch_losses(SubjectToLoRA(net), base, {**batch, "reference": references}) as batch_loss:
            losses[name] = batch_loss["mse"].item()
    latents = base.encode_images(batch["target"])
    sigma, noise = sample_noise(batch["seed"], latents.shape[1:], base)
    x_noisy = base.model_sampling.noise_scaling(sigma, noise, latents)
    prediction = base.predict(x_noisy, sigma, base.encode_text(batch["caption"]))
    losses["none"] = torch.nn.functional.mse_loss(prediction, base.target(noise, latents)).item()
    return losses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hypernet", type=Path, nargs="+", required=True)
    parser.add_argument("--ckpt", type=Path, default=CACHE / "world_sd15.safetensors")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import_comfy()
    from train.base_model import FrozenBase

    base = FrozenBase.load(str(args.ckpt), torch.device("cpu"))
    batch = pair_batch(args.pairs, args.seed)
    for path in args.hypernet:
        net, metadata = hypernet.load(str(path))
        gap = identity_gap(base, net.eval(), batch)
        print(f"{path} (step {metadata.get('training', {}).get('step')}): " +
              ", ".join(f"{name} {value:.5f}" for name, value in gap.items()))


if __name__ == "__main__":
    main()
