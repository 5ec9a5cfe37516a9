"""Assemble the world's SD1.5-family checkpoint: trained UNet (fp16) + trained TAESD (fp16) [+ regenerated CLIP-L].

    python -m bench.world.base.build              # .cache/world/world_sd15.safetensors (with CLIP-L, ~290 MB)
    python -m bench.world.base.build --no-clip    # .cache/world/world_sd15_noclip.safetensors (~37 MB, to commit)

The CLIP-L is never trained: `clip_l_state_dict(seed)` regenerates it bit for bit, so the committed file leaves
it out and records the seed in its metadata; `with_clip` / `load_world_checkpoint` put it back.
"""
import argparse
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ...tiny_checkpoints import SD15_TINY_UNET, clip_l_state_dict
from .common import CACHE, import_comfy, load_state, setup_logging

log = logging.getLogger(__name__)
FORMAT = "hypersubject-world-sd15/1"
UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model."
DEFAULT_CLIP_SEED = 0
# Still detected as SD15 by the stock loader (model_channels 320, context_dim 768), with a transformer in the input
# block, the middle block and both output blocks: 4 blocks, 32 attention targets for a LoRA (25.8M parameters).
WORLD_UNET = {**SD15_TINY_UNET, "transformer_depth_output": [1, 1], "transformer_depth_middle": 1}
# The guidance scale the world's base model samples at (KSampler cfg, HM-CFG s_text) in the bench and the demo: its
# text oracle falls with cfg (held-out identity 96 % at 2, 85 % at 3, 73 % at 5; 48 cases), context alignment rises.
WORLD_CFG = 3.0


def unet_keys(unet_state: dict) -> dict:
    """UNet weights under the checkpoint prefix, in fp16 (as SD1.5 checkpoints ship)."""
    return {UNET_PREFIX + k: v.detach().to(torch.float16) for k, v in unet_state.items()}


def vae_keys(taesd_state: dict) -> dict:
    """TAESD weights (calibrated vae_scale/vae_shift included) under the checkpoint prefix, in fp16 like the UNet."""
    return {VAE_PREFIX + k: v.detach().to(torch.float16) for k, v in taesd_state.items()}


def unprefixed(state: dict, prefix: str) -> dict:
    """The weights under one checkpoint prefix, without it, in fp32 (the inverse of `unet_keys` / `vae_keys`)."""
    return {k.removeprefix(prefix): v.float() for k, v in state.items() if k.startswith(prefix)}


def with_clip(state: dict, clip_seed: int) -> dict:
    """The state plus the regenerated random CLIP-L text encoder (about 4 s, 123M parameters)."""
    return {**state, **clip_l_state_dict(clip_seed)}


def write_checkpoint(path: Path, state: dict, clip_seed: int, info: dict | None = None) -> Path:
    """Atomic safetensors write; metadata names the format, the CLIP seed and whether CLIP-L is inside."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    has_clip = any(k.startswith(CLIP_PREFIX) for k in state)
    metadata = {"format": FORMAT, "clip_l_seed": str(clip_seed), "has_clip": str(has_clip).lower(),
                "unet_config": json.dumps(WORLD_UNET), "info": json.dumps(info or {})}
    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a world checkpoint; says what to do when the file is something else."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{path} is not a world checkpoint: expected format {FORMAT!r}, got "
                             f"{metadata.get('format')!r}; build one with `python -m bench.world.base.build`")
        return {k: f.get_tensor(k) for k in f.keys()}, metadata


def complete_state(path: Path) -> dict:
    """All tensors of a world checkpoint, with the CLIP-L regenerated from its recorded seed when left out."""
    state, metadata = read_checkpoint(path)
    if metadata.get("has_clip") == "true":
        return state
    return with_clip(state, int(metadata["clip_l_seed"]))


def load_world_checkpoint(path: Path):
    """(MODEL, CLIP, VAE) through ComfyUI's own guess-config loader, CLIP-L re-added if the file lacks it."""
    import comfy.sd

    return comfy.sd.load_state_dict_guess_config(complete_state(path))[:3]


def build(vae_path: Path, unet_path: Path | None, out: Path, clip_seed: int, include_clip: bool,
          use_ema: bool = True) -> Path:
    """Read the training checkpoints and write the assembled file."""
    vae_document, vae = load_state(vae_path)
    state = vae_keys(vae["model"])
    info = {"vae": {"step": vae_document["step"], **vae_document["metrics"]}}
    if unet_path is not None:
        unet_document, unet = load_state(unet_path)
        state.update(unet_keys(unet["ema" if use_ema else "model"]))
        info["unet"] = {"step": unet_document["step"], "ema": use_ema, "config": unet_document["config"]}
    else:
        from ...tiny_checkpoints import tiny_unet_state_dict

        state.update({k: v.half() for k, v in tiny_unet_state_dict(0, WORLD_UNET).items()})
        info["unet"] = "untrained (seed 0)"
    if include_clip:
        state = with_clip(state, clip_seed)
    return write_checkpoint(out, state, clip_seed, info)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, default=CACHE / "vae_state.safetensors", help="train_vae checkpoint")
    parser.add_argument("--unet", type=Path, default=CACHE / "unet_state.safetensors", help="train_unet checkpoint")
    parser.add_argument("--out", type=Path, default=None, help="output .safetensors")
    parser.add_argument("--clip-seed", type=int, default=DEFAULT_CLIP_SEED, help="seed of the random CLIP-L")
    parser.add_argument("--no-clip", action="store_true", help="leave CLIP-L out (regenerated at load time)")
    parser.add_argument("--raw", action="store_true", help="export the raw UNet weights instead of the EMA")
    args = parser.parse_args(argv)
    setup_logging()
    import_comfy()
    out = args.out or CACHE / ("world_sd15_noclip.safetensors" if args.no_clip else "world_sd15.safetensors")
    build(args.vae, args.unet, out, args.clip_seed, not args.no_clip, use_ema=not args.raw)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 2**20)


if __name__ == "__main__":
    main()
