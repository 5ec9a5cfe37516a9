"""The frozen base model, loaded through ComfyUI so that layer names match what the nodes patch.

The trainer owns its copy of the diffusion model: it is moved to the training device once and ComfyUI's model
management never sees it (the VAE, the text encoder and CLIP vision are still loaded and placed by ComfyUI,
under no_grad).
"""
import contextlib
import functools
import logging
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
TEXT_CACHE_SIZE = 4096  # captions kept encoded (a CLIP-L context is 77×768 floats, 236 KB)
LATENT_TO_PIXELS = 8  # ComfyUI's samplers give SDXL's size conditioning as latent size × 8
FLUX_GUIDANCE = 3.5  # what ComfyUI gives Flux's guidance input for a prompt without FluxGuidance (model_base.Flux)


def comfyui_root() -> Path:
    """The ComfyUI checkout: $HYPERSUBJECT_COMFYUI, else the project-local copy that `make env` makes."""
    root = Path(os.environ.get("HYPERSUBJECT_COMFYUI", REPO / ".comfyui"))
    if not (root / "comfy").is_dir():
        raise RuntimeError(f"no ComfyUI at {root}: run `make env` or set HYPERSUBJECT_COMFYUI to a ComfyUI checkout")
    return root


def import_comfy(cpu: bool) -> None:
    """Make ComfyUI importable in-process; `--cpu` when running on the CPU (ComfyUI parses sys.argv on import)."""
    if "comfy.cli_args" in sys.modules:
        return  # already imported by the host process (tests, or ComfyUI itself)
    sys.path.insert(0, str(comfyui_root()))
    import comfy.options

    comfy.options.enable_args_parsing()
    argv, sys.argv = sys.argv, [sys.argv[0]] + ["--cpu"] * cpu
    try:
        import comfy.cli_args  # noqa: F401
    finally:
        sys.argv = argv


def unet_dtype(amp: str) -> torch.dtype:
    """Weight dtype of the frozen UNet: float32 unless autocast runs in half precision anyway."""
    return {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


@dataclass(frozen=True)
class EncodedText:
    """Captions through the base model's text encoder: the context B×L×D and the pooled text B×P (read by SDXL-family
    models through their ADM input and by Flux through its vector input, unused by SD1.5)."""

    context: Tensor
    pooled: Tensor


class FrozenBase:
    """Diffusion model + noise schedule + VAE encode/decode + text encode of one base model, all frozen.

    SD1.5 family (context only) and SDXL family (context, plus pooled text and image size through the ADM input,
    built as ComfyUI's samplers build it), eps prediction; Flux.1 (context, pooled text and its guidance input),
    rectified flow. `load` reads standard files; the constructor takes ComfyUI objects already built (a tiny
    SDXL-architecture model in the tests, since the stock loader detects SDXL only at its full 2.6B-parameter size).
    Captions go through the text encoder once each (LRU cache), or come from a text cache file (train/text_cache.py).
    """

    def __init__(self, model, clip, vae, device: torch.device, source: str = "the base model",
                 texts: dict[str, tuple[Tensor, Tensor]] | None = None):
        if clip is None and texts is None:
            raise ValueError(f"{source} has no text encoder: the trainer encodes captions with the base model's own "
                             f"text encoder; use a full checkpoint (UNet + VAE + CLIP), or give a text_cache")
        if vae is None:
            raise ValueError(f"{source} has no VAE: give the base model's VAE file as base_vae")
        check_trainable(model, source)
        self.flux = is_flux(model)
        self.model = model.to(device).requires_grad_(False).eval()
        self.clip, self.vae = clip, vae
        self.diffusion_model = model.diffusion_model
        self.model_sampling = model.model_sampling
        self.dtype = model.manual_cast_dtype or model.get_dtype()
        self.device = device
        self.source = source
        self._texts: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict(texts or {})
        self._cached_texts_only = texts is not None

    @classmethod
    def load(cls, checkpoint: str, device: torch.device, dtype: torch.dtype = torch.float32, vae: str = "",
             text_cache: str = "") -> "FrozenBase":
        """The base model of a standard .safetensors checkpoint (UNet + VAE + text encoder), through ComfyUI; or,
        with `vae`, of a diffusion-model file (as Flux ships) and that VAE file. With `text_cache`, captions come
        from that file and the text encoder is not loaded."""
        import comfy.model_management
        import comfy.sd
        import comfy.utils

        from . import text_cache as text_cache_file

        if not Path(checkpoint).is_file():
            raise ValueError(f"base_checkpoint {checkpoint!r} is not a file: expected a standard SD1.5- or "
                             f"SDXL-family .safetensors checkpoint, or a Flux diffusion model with base_vae")
        texts = text_cache_file.read(text_cache) if text_cache else None
        if vae:
            if not Path(vae).is_file():
                raise ValueError(f"base_vae {vae!r} is not a file: expected the base model's VAE .safetensors")
            state, metadata = comfy.utils.load_torch_file(checkpoint, safe_load=True, return_metadata=True)
            patcher = comfy.sd.load_diffusion_model_state_dict(state, model_options={"dtype": dtype}, metadata=metadata)
            if patcher is None:
                raise ValueError(f"base_checkpoint {checkpoint} is not a diffusion model ComfyUI recognises: with "
                                 f"base_vae it must be a diffusion model alone (a Flux.1 file such as "
                                 f"flux1-dev.safetensors); for a full checkpoint leave base_vae empty")
            clip, vae_model = None, comfy.sd.VAE(sd=comfy.utils.load_torch_file(vae, safe_load=True))
        else:
            text_dtype = {"dtype": torch.float32} if device.type == "cpu" else {}  # ComfyUI's fp16 is slow on CPUs
            patcher, clip, vae_model, _ = comfy.sd.load_checkpoint_guess_config(
                checkpoint, output_vae=True, output_clip=texts is None, model_options={"dtype": dtype},
                te_model_options=text_dtype)
        if device.type != "cpu":
            comfy.model_management.unload_all_models()  # the loader may have put the UNet under management
        return cls(patcher.model, clip, vae_model, device, source=checkpoint, texts=texts)

    @property
    def num_timesteps(self) -> int:
        """Length of the discrete training schedule (1000 for SD1.5)."""
        return len(self.model_sampling.sigmas)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Images B×H×W×3 in [0, 1] → latents in the UNet's space (`process_latent_in`), on the device."""
        return self.model.process_latent_in(self.vae.encode(images).to(self.device, torch.float32))

    @torch.no_grad()
    def decode_latents(self, latents: Tensor) -> Tensor:
        """UNet-space latents → images B×H×W×3 in [0, 1] on the CPU."""
        return self.vae.decode(self.model.process_latent_out(latents)).float().clamp(0, 1).cpu()

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> EncodedText:
        """Captions → context and pooled text on the device; each caption is encoded once (LRU cache), or read
        from the text cache."""
        for caption in captions:
            if caption in self._texts:
                self._texts.move_to_end(caption)
                continue
            if self._cached_texts_only:
                raise ValueError(f"the caption {caption!r} is not in the text cache of {self.source}: make the "
                                 f"cache again with python -m train.text_cache for this config's data")
            context, pooled = self.clip.encode_from_tokens(self.clip.tokenize(caption), return_pooled=True)
            self._texts[caption] = (context.float().cpu(), pooled.float().cpu())
            if len(self._texts) > TEXT_CACHE_SIZE:
                self._texts.popitem(last=False)
        return EncodedText(*(torch.cat([self._texts[c][i] for c in captions]).to(self.device) for i in (0, 1)))

    def predict(self, x_noisy: Tensor, sigma: Tensor, text: EncodedText) -> Tensor:
        """The diffusion model's output for the noisy latent x at noise level σ (one per row), in float32 and in
        the model's own parameterization (`target`); differentiable."""
        sampling = self.model_sampling
        x_in = sampling.calculate_input(sigma, x_noisy).to(self.dtype)
        timestep = sampling.timestep(sigma).float()
        with saved_copies() if self.flux else contextlib.nullcontext():
            return self.diffusion_model(x_in, timestep, context=text.context.to(self.dtype),
                                        **self.extra_inputs(text, x_noisy.shape)).float()

    def target(self, noise: Tensor, latents: Tensor) -> Tensor:
        """What `predict` should give for x = noise_scaling(σ, noise, latents): the noise ε for eps prediction, the
        velocity ε − x0 for rectified flow (Flux); either way ComfyUI's denoised x − σ·output is then x0."""
        import comfy.model_sampling

        return noise - latents if isinstance(self.model_sampling, comfy.model_sampling.CONST) else noise

    def extra_inputs(self, text: EncodedText, latent_shape: torch.Size) -> dict:
        """The inputs besides latent, timestep and context, as ComfyUI's samplers build them for a plain text prompt:
        SDXL's ADM vector (pooled text + size embeddings for the image's width and height, latent × 8, no crop);
        Flux's pooled text and, for guidance-distilled models (dev), guidance FLUX_GUIDANCE; none for SD1.5."""
        inputs = {}
        if self.model.adm_channels or self.flux:
            height, width = latent_shape[-2] * LATENT_TO_PIXELS, latent_shape[-1] * LATENT_TO_PIXELS
            inputs["y"] = self.model.encode_adm(pooled_output=text.pooled, width=width, height=height).to(
                self.device, self.dtype)
        if self.flux and self.diffusion_model.params.guidance_embed:
            inputs["guidance"] = torch.full((latent_shape[0],), FLUX_GUIDANCE, device=self.device)
        return inputs

    def enable_grad_checkpointing(self) -> None:
        """Recompute every res block and spatial transformer (Flux: every block) in the backward pass instead of
        storing activations.

        Non-reentrant `torch.utils.checkpoint`, so gradients reach the LoRA factors that the forward hooks close
        over (ComfyUI's own `use_checkpoint` passes explicit parameter lists and would miss them). The forwards are
        wrapped on this trainer-owned instance only; nothing of ComfyUI's classes changes.
        """
        from comfy.ldm.flux.layers import DoubleStreamBlock, SingleStreamBlock
        from comfy.ldm.modules.attention import SpatialTransformer
        from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

        for module in self.diffusion_model.modules():
            if "forward" in vars(module):
                continue  # wrapped already
            if isinstance(module, (DoubleStreamBlock, SingleStreamBlock)):
                forward = with_saved_copies(module.forward)
            elif isinstance(module, (ResBlock, SpatialTransformer)):
                forward = module.forward
            else:
                continue
            module.forward = functools.partial(torch.utils.checkpoint.checkpoint, forward, use_reentrant=False)


def saved_copies():
    """Autograd keeps copies of the activations it saves for the backward pass (weights as they are): ComfyUI's Flux
    adds its residuals in place (`x += …`), which would change tensors that the backward pass still needs."""
    def pack(tensor: Tensor) -> Tensor:
        return tensor if isinstance(tensor, torch.nn.Parameter) else tensor.clone()

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)


def with_saved_copies(forward):
    """`forward` run under `saved_copies`, also when gradient checkpointing runs it again in the backward pass."""
    @functools.wraps(forward)
    def run(*args, **kwargs):
        with saved_copies():
            return forward(*args, **kwargs)
    return run


def is_flux(model) -> bool:
    """Whether a ComfyUI model is Flux.1 itself (Flux.2 and Chroma subclass its class but differ)."""
    import comfy.model_base

    return type(model) is comfy.model_base.Flux


def check_trainable(model, source: str) -> None:
    """Refuse a base model the trainer cannot train for: eps-prediction SD1.5 and SDXL families, and Flux.1."""
    import comfy.model_base

    eps_unet = model.model_type == comfy.model_base.ModelType.EPS and (
        not model.adm_channels or isinstance(model, comfy.model_base.SDXL))
    if not (eps_unet or is_flux(model)):
        raise ValueError(f"{source} is a {type(model).__name__} ({model.model_type.name}): the trainer supports "
                         f"eps-prediction SD1.5-family and SDXL-family base models, and Flux.1")


class FrozenClipVision:
    """A ComfyUI CLIP vision model giving the hypernet's tokens (penultimate hidden states), as the nodes do."""

    def __init__(self, path: str):
        import comfy.clip_vision

        if not Path(path).is_file():
            raise ValueError(f"clip_vision {path!r} is not a file: expected a CLIP vision .safetensors file")
        self.model = comfy.clip_vision.load(path)
        if self.model is None:
            raise ValueError(f"{path} is not a CLIP vision model ComfyUI recognises")
        self.token_dim = self.tokens(torch.zeros(1, 64, 64, 3)).shape[-1]

    @torch.no_grad()
    def tokens(self, images: Tensor) -> Tensor:
        """Images B×H×W×3 in [0, 1] → tokens B×N×D (float32, CPU)."""
        return self.model.encode_image(images).penultimate_hidden_states.float().cpu()
