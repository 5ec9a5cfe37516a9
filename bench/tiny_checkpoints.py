"""Tiny but real checkpoints that ComfyUI's stock loaders accept, built from a seed (never downloaded).

- an SD1.5-family checkpoint: the smallest UNet that `CheckpointLoaderSimple` detects as SD15
  (model_channels 320, context_dim 768, one level; comfyui-runtime.md §4.1), TAESD as its VAE, and
  optionally a random CLIP-L text encoder;
- a CLIP-vision ViT-L/14 that `CLIPVisionLoader` loads (random weights, 304M parameters);
- a Flux.1-dev diffusion model that `UNETLoader` detects as Flux: one double and one single block at Flux's own
  width (3072, pinned by its 24 heads and rotary axes 16/56/56; 533M parameters, bf16), with a 768-d text input so
  that a CLIP-L text encoder (the same random one, as a text-encoder file) conditions it in tests instead of a
  T5-XXL; and a 16-channel TAESD as its VAE.

ComfyUI's ops skip weight init, so every tensor is drawn here explicitly: outputs are finite and differ by seed.
CLIP weights come from NumPy's legacy `RandomState` so the same seed gives the same file on every platform.
Needs ComfyUI importable (bench/harness/comfy_runtime.py).
"""
import json
from pathlib import Path

import numpy as np
import torch
import safetensors.torch

from hypernet import write_atomic

BUILDER_VERSION = 1

SD15_TINY_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [0, 0],
    "transformer_depth_middle": -2,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
# The same one-level UNet in SDXL's layout: 2048-d context (CLIP-L ⊕ CLIP-G), pooled text + size through the ADM input.
SDXL_TINY_UNET = dict(SD15_TINY_UNET, context_dim=2048, adm_in_channels=2816, num_classes="sequential",
                      use_linear_in_transformer=True, num_heads=-1, num_head_channels=64)

# Flux.1-dev's layout (comfy/model_detection.py reads it back from the keys), cut to one block of each kind.
FLUX_TINY = {"in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 768, "hidden_size": 3072,
             "mlp_ratio": 4.0, "num_heads": 24, "depth": 1, "depth_single_blocks": 1, "axes_dim": [16, 56, 56],
             "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True}


def init_fan_in_(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Norms to identity (GroupNorm and LayerNorm weights, RMSNorm scales), biases to zero, every other weight
    N(0, 1/fan_in): finite, seed-dependent outputs."""
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            with torch.no_grad():
                norm_weight = isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and name == "weight"
                if norm_weight or name == "scale":
                    param.fill_(1.0)
                elif name == "bias" or param.ndim < 2:
                    param.zero_()
                else:
                    fan_in = param[0].numel()
                    param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
    return module


def tiny_unet_state_dict(seed: int, unet_config: dict = SD15_TINY_UNET) -> dict:
    """ComfyUI's own UNetModel with explicit init, keys as in a checkpoint (`model.diffusion_model.`)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**unet_config, operations=comfy.ops.disable_weight_init)
    init_fan_in_(unet, torch.Generator().manual_seed(seed))
    return {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}


def flux_state_dict(seed: int, config: dict = FLUX_TINY) -> dict:
    """ComfyUI's own Flux transformer with explicit init, keys as in a Flux diffusion-model file (no prefix)."""
    import comfy.ldm.flux.model
    import comfy.ops

    model = comfy.ldm.flux.model.Flux(**config, operations=comfy.ops.disable_weight_init)
    return init_fan_in_(model, torch.Generator().manual_seed(seed)).state_dict()


def taesd_state_dict(seed: int, latent_channels: int = 4) -> dict:
    """TAESD encoder+decoder, fan-in init so decoded images are not all black."""
    from comfy.taesd.taesd import TAESD

    vae = init_fan_in_(TAESD(latent_channels=latent_channels), torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    return {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}


def tiny_sdxl(seed: int = 0) -> tuple:
    """(model, clip, vae) of an SDXL-architecture base, in memory: ComfyUI's own SDXL model class around
    SDXL_TINY_UNET (19.7M), the real SDXL text encoders (CLIP-L + CLIP-G, 818M, random; 3.3 GB in float32) and
    TAESD. Never a file: the stock loader detects SDXL only at its full 2.6B-parameter size."""
    import comfy.sd
    import comfy.supported_models

    generator = torch.Generator().manual_seed(seed)
    family = comfy.supported_models.SDXL(SDXL_TINY_UNET)
    model = init_fan_in_(family.get_model({}), generator)
    clip = comfy.sd.CLIP(family.clip_target(), model_options={"dtype": torch.float32})
    init_fan_in_(clip.cond_stage_model, generator)
    vae_state = {k.removeprefix("first_stage_model."): v for k, v in taesd_state_dict(seed).items()}
    return model, clip, comfy.sd.VAE(sd=vae_state)


def random_state_tensors(shapes: dict, seed: int, std: float = 0.02) -> dict:
    """Platform-stable random weights: N(0, std) from NumPy's RandomState; norms at 1/0, biases 0."""
    rng = np.random.RandomState(seed)
    tensors = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if "norm" in key or "layrnorm" in key:
            value = np.ones(shape) if key.endswith("weight") else np.zeros(shape)
        elif key.endswith("bias"):
            value = np.zeros(shape)
        else:
            value = rng.standard_normal(shape) * std
        tensors[key] = torch.from_numpy(value.astype(np.float16))
    return tensors


def clip_l_state_dict(seed: int) -> dict:
    """A random CLIP-L text encoder with SD1.5's fixed config, keys under `cond_stage_model.transformer.`."""
    import comfy.clip_model
    import comfy.ops

    config_path = Path(comfy.clip_model.__file__).parent / "sd1_clip_config.json"
    config = json.loads(config_path.read_text())
    with torch.device("meta"):
        model = comfy.clip_model.CLIPTextModel(config, torch.float16, "meta", comfy.ops.manual_cast)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tensors = random_state_tensors(shapes, seed + 2)
    return {f"cond_stage_model.transformer.{k}": v for k, v in tensors.items()}


def write_sd15_checkpoint(path: Path, seed: int = 0, with_clip: bool = False) -> Path:
    """The smallest SD1.5-family checkpoint: UNet (13.6M) + TAESD (2.45M) [+ CLIP-L (123M)], UNet in fp16."""
    state = {k: v.half() for k, v in tiny_unet_state_dict(seed).items()}
    state.update(taesd_state_dict(seed))
    if with_clip:
        state.update(clip_l_state_dict(seed))
    return _atomic_save(state, path)


def write_flux_model(path: Path, seed: int = 0) -> Path:
    """`flux_state_dict` in bf16, as Flux diffusion-model files ship (1.07 GB)."""
    return _atomic_save({k: v.to(torch.bfloat16) for k, v in flux_state_dict(seed).items()}, path)


def write_clip_l(path: Path, seed: int = 0) -> Path:
    """`clip_l_state_dict` as a text-encoder file (clip_l.safetensors' layout) for CLIPLoader and DualCLIPLoader."""
    prefix = "cond_stage_model.transformer."
    return _atomic_save({k.removeprefix(prefix): v for k, v in clip_l_state_dict(seed).items()}, path)


def write_flux_vae(path: Path, seed: int = 0) -> Path:
    """A 16-channel TAESD (Flux's latent space) as a VAE file that VAELoader and comfy.sd.VAE detect."""
    state = taesd_state_dict(seed, latent_channels=16)
    return _atomic_save({k.removeprefix("first_stage_model."): v for k, v in state.items()}, path)


def write_clip_vision_vit_l(path: Path, seed: int = 0) -> Path:
    """A random CLIP-vision ViT-L/14 (224 px) in the layout `comfy.clip_vision.load` detects."""
    import comfy.clip_vision

    config = Path(comfy.clip_vision.__file__).parent / "clip_vision_config_vitl.json"
    with torch.device("meta"):
        model = comfy.clip_vision.ClipVisionModel(str(config))
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
    return _atomic_save(random_state_tensors(shapes, seed + 3), path)


def _atomic_save(state: dict, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, safetensors.torch.save({k: v.contiguous() for k, v in state.items()}))
    return path


def tiny_hypernet(seed: int = 0, encoder: str = "embedded", rank: int = 4, lora_std: float = 0.02,
                  family: str = "sd15"):
    """A small HyperSubject net for the tiny SD1.5 UNet (or the tiny Flux); its up heads are randomised (an untrained
    net predicts "no change") so that its LoRAs visibly change the model."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from hypernet import EncoderSpec, HyperNet, HyperNetConfig, family_targets

    with torch.device("meta"):
        model = (Flux(**FLUX_TINY, operations=comfy.ops.disable_weight_init) if family == "flux"
                 else UNetModel(**SD15_TINY_UNET, operations=comfy.ops.disable_weight_init))
    found, targets = family_targets(model)
    spec = (EncoderSpec("embedded", image_size=64, token_dim=64, width=16) if encoder == "embedded"
            else EncoderSpec("clip_vision", image_size=224, token_dim=1024, clip_vision_size="vit-l-14"))
    config = HyperNetConfig(family=found, targets=tuple(targets), rank=rank, alpha=float(rank),
                            d_model=32, n_layers=1, n_heads=2, encoder=spec)
    torch.manual_seed(seed)
    net = HyperNet(config)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".heads.up_" in f".{name}":
                param.normal_(0, lora_std)
    return net


def write_tiny_hypernet(path: Path, seed: int = 0, encoder: str = "embedded", family: str = "sd15") -> Path:
    """`tiny_hypernet` saved in the HyperSubject checkpoint format."""
    from hypernet import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(str(path), tiny_hypernet(seed, encoder, family=family), training={"note": "random weights for tests"})
    return path
