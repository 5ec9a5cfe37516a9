"""Full-size SD1.5 and SDXL UNets with random weights, built from ComfyUI's own model configs (never downloaded).

    .venv/bin/python -m bench.full_size sd15 sdxl     # build the files (cached under .cache/full_size/)

Each is ComfyUI's UNetModel at the real architecture (SD1.5 859.5M parameters, SDXL 2,567.5M), fan-in init, stored
in fp16 as a diffusion-model file that the stock UNETLoader (`comfy.sd.load_diffusion_model`) detects. Never
committed. The benchmarks load them with random text conditioning of the family's shape.
"""
import argparse
from pathlib import Path

import torch

from .harness.comfy_runtime import REPO, import_comfy
from .tiny_checkpoints import SD15_TINY_UNET, init_fan_in_

CACHE = REPO / ".cache" / "full_size"
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
             "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             "use_temporal_attention": False, "use_temporal_resblock": False}
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}
UNETS = {"sd15": SD15_UNET, "sdxl": SDXL_UNET, "tiny": SD15_TINY_UNET}  # tiny: the test UNet, to test the path
POOLED_DIM = {"sdxl": 1280}  # SDXL's CLIP-G pooled text, fed to the ADM input


def unet_file(name: str, folder: Path = CACHE, seed: int = 0) -> Path:
    """The UNet-only file of `name` (a key of UNETS), built once and cached in `folder`."""
    path = Path(folder) / f"{name}_unet_random_seed{seed}.safetensors"
    if path.exists():
        return path
    import comfy.ops
    import safetensors.torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**UNETS[name], dtype=torch.float16, operations=comfy.ops.disable_weight_init)
    init_fan_in_(unet, torch.Generator().manual_seed(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")  # streamed to disk (SDXL is 5 GB), renamed when complete
    safetensors.torch.save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(partial),
                                metadata={"note": "random weights for benchmarks"})
    partial.replace(path)
    return path


def load_unet(name: str, folder: Path = CACHE):
    """(MODEL, context width, pooled width or 0) through the stock diffusion-model loader."""
    import comfy.sd

    model = comfy.sd.load_diffusion_model(str(unet_file(name, folder)))
    return model, UNETS[name]["context_dim"], POOLED_DIM.get(name, 0)


def random_conditioning(context_dim: int, pooled_dim: int, seed: int, tokens: int = 77) -> list:
    """A CONDITIONING value of the family's shape, from random text embeddings (no text encoder needed)."""
    generator = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": torch.randn(1, pooled_dim, generator=generator)} if pooled_dim else {}
    return [[torch.randn(1, tokens, context_dim, generator=generator), extra]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(UNETS))
    args = parser.parse_args()
    import_comfy()
    for name in args.names:
        print(unet_file(name))


if __name__ == "__main__":
    main()
