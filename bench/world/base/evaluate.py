"""Sample the world checkpoint through the stock ComfyUI path and measure context alignment per attribute.

    python -m bench.world.base.evaluate [--ckpt .cache/world/world_sd15.safetensors] [--seeds 2]

CheckpointLoaderSimple → CLIPTextEncode (prompt, and "" as negative) → EmptyLatentImage → KSampler (euler,
normal, 20 steps, cfg 5) → VAEDecode, all in-process on the CPU. Each prompt is one KSampler call with a batch of
`--seeds` latents. Also reports the ceiling: the same metric on true renders passed through VAEEncode/VAEDecode
(with their PSNR), and writes PNG grids (samples; originals over reconstructions).
"""
import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from ..contexts import BACKGROUNDS, LIGHTINGS, POSITIONS, SIZES, all_contexts, prompt
from ..metrics import context_alignment
from ..subjects import split_subjects
from .build import WORLD_CFG, complete_state, read_checkpoint, write_checkpoint
from .common import CACHE, import_comfy, psnr, render_batch, setup_logging

log = logging.getLogger(__name__)
ATTRIBUTES = ("background", "position", "size", "lighting", "all")
CHANCE = {"background": 1 / len(BACKGROUNDS), "position": 1 / len(POSITIONS), "size": 1 / len(SIZES),
          "lighting": 1 / len(LIGHTINGS), "all": 1 / len(all_contexts())}


def stock_loadable(ckpt: Path, work: Path) -> Path:
    """The checkpoint itself when it carries CLIP-L, else a copy with the regenerated CLIP-L (stock loader input)."""
    _, metadata = read_checkpoint(ckpt)
    if metadata.get("has_clip") == "true":
        return ckpt
    full = work / (ckpt.stem + "_with_clip.safetensors")
    return write_checkpoint(full, complete_state(ckpt), int(metadata["clip_l_seed"]), json.loads(metadata["info"]))


def load_stock(path: Path):
    """(MODEL, CLIP, VAE) through the CheckpointLoaderSimple node, its folder registered as a checkpoints folder."""
    import folder_paths
    import nodes

    folder_paths.add_model_folder_path("checkpoints", str(path.parent))
    return nodes.CheckpointLoaderSimple().load_checkpoint(path.name)


def sample_prompt(model, clip, vae, text: str, seed: int, batch: int, steps: int, cfg: float) -> np.ndarray:
    """(batch, 64, 64, 3) images in [0, 1] for one prompt, stock nodes only."""
    import nodes

    positive = nodes.CLIPTextEncode().encode(clip, text)[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = nodes.EmptyLatentImage().generate(64, 64, batch)[0]
    samples = nodes.KSampler().sample(model, seed, steps, cfg, "euler", "normal", positive, negative, latent)[0]
    return nodes.VAEDecode().decode(vae, samples)[0].numpy()


def vae_round_trip(vae, images: torch.Tensor) -> np.ndarray:
    """True renders through the VAEEncode and VAEDecode nodes: the ceiling any sample can reach."""
    import nodes

    latent = nodes.VAEEncode().encode(vae, images.permute(0, 2, 3, 1))[0]
    return nodes.VAEDecode().decode(vae, latent)[0].numpy()


def alignment_rates(images, contexts) -> dict:
    """Share of images whose recovered attribute matches the prompted one, per attribute."""
    hits = [context_alignment(image, context) for image, context in zip(images, contexts)]
    return {name: float(np.mean([h[name] for h in hits])) for name in ATTRIBUTES}


def save_grid(images: np.ndarray, columns: int, path: Path) -> None:
    """Tile (n, h, w, 3) images row-major into one PNG."""
    from ..dataset import save_png

    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.ones((rows * h, columns * w, 3), np.float32)
    for i, image in enumerate(images):
        grid[(i // columns) * h:(i // columns + 1) * h, (i % columns) * w:(i % columns + 1) * w] = image
    save_png(grid, path)


def main(argv=None) -> None:
    """CLI; runs under inference mode, as ComfyUI's executor does."""
    with torch.inference_mode():
        run(argv)


def run(argv=None) -> None:
    """Parse arguments, sample, measure, write results.json and the grids."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=CACHE / "world_sd15.safetensors")
    parser.add_argument("--prompts", type=int, default=72, help="number of contexts (evenly spread over the 72)")
    parser.add_argument("--seeds", type=int, default=2, help="samples per prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=WORLD_CFG)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=CACHE / "eval")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logging(args.out / "evaluate.log")
    torch.set_num_threads(args.threads)
    import_comfy()
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)  # like main.py --disable-progress-bar; the log has the results
    model, clip, vae = load_stock(stock_loadable(args.ckpt, args.out))
    contexts = [all_contexts()[i] for i in np.linspace(0, 71, args.prompts).round().astype(int)]
    images = np.concatenate([sample_prompt(model, clip, vae, prompt(c), args.seed + i, args.seeds, args.steps,
                                           args.cfg) for i, c in enumerate(contexts)])
    sample_contexts = [c for c in contexts for _ in range(args.seeds)]
    _, held_out = split_subjects()
    truth, truth_contexts = render_batch(held_out, 64, np.random.default_rng(args.seed))
    recon = vae_round_trip(vae, truth)

    results = {"ckpt": str(args.ckpt), "info": json.loads(read_checkpoint(args.ckpt)[1]["info"]),
               "sampler": {"sampler": "euler", "scheduler": "normal", "steps": args.steps, "cfg": args.cfg,
                           "prompts": len(contexts), "seeds": args.seeds},
               "samples": alignment_rates(images, sample_contexts), "chance": CHANCE,
               "vae_round_trip": {**alignment_rates(recon, truth_contexts),
                                  "psnr": psnr(torch.from_numpy(recon), truth.permute(0, 2, 3, 1))}}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    save_grid(images, 2 * args.seeds * 4, args.out / "samples.png")
    save_grid(np.concatenate([truth.permute(0, 2, 3, 1).numpy()[:16], recon[:16]]), 16, args.out / "vae.png")
    for name in ATTRIBUTES:
        log.info("%-10s samples %5.1f %%   chance %5.1f %%   vae ceiling %5.1f %%", name,
                 100 * results["samples"][name], 100 * CHANCE[name], 100 * results["vae_round_trip"][name])
    log.info("VAE round-trip PSNR %.2f dB; wrote %s", results["vae_round_trip"]["psnr"], args.out)


if __name__ == "__main__":
    main()
