"""Target layers: which Linear modules of a diffusion model the hypernetwork predicts a LoRA for."""
import re
from dataclasses import dataclass

from torch import nn

PREFIX = "diffusion_model."
# Self- and cross-attention projections of every transformer block (ComfyUI/LDM module names).
ATTENTION_PATTERN = r"transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"
# Flux: image and text attention of the double blocks (qkv, proj), the fused linears of the single blocks.
FLUX_PATTERN = r"(?:^|\.)(?:double_blocks\.\d+\.(?:img|txt)_attn\.(?:qkv|proj)|single_blocks\.\d+\.linear[12])$"


@dataclass(frozen=True)
class Target:
    """One Linear layer to adapt; `name` is its module path under the model root, e.g. `diffusion_model.…attn2.to_k`."""

    name: str
    in_features: int
    out_features: int

    @property
    def weight_key(self) -> str:
        """ComfyUI state-dict key of the adapted weight."""
        return self.name + ".weight"


FAMILIES = {  # base-model family → its default target pattern
    "sd15": ATTENTION_PATTERN,
    "sdxl": ATTENTION_PATTERN,
    "flux": FLUX_PATTERN,
}
UNET_CONTEXT_DIMS = {768: "sd15", 2048: "sdxl"}


def find_targets(diffusion_model: nn.Module, pattern: str | re.Pattern = ATTENTION_PATTERN,
                 prefix: str = PREFIX) -> list[Target]:
    """Linear-like modules (2-D `weight`) whose name matches `pattern`, in module order; works on meta tensors."""
    regex = re.compile(pattern)
    targets = []
    for name, module in diffusion_model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is None or weight.ndim != 2 or not regex.search(name):
            continue
        if prefix and name.startswith(prefix):
            raise ValueError(f"module names already start with {prefix!r} (found {name!r}): pass the diffusion model "
                             f"itself (e.g. `model.diffusion_model`), not its wrapper")
        targets.append(Target(prefix + name, in_features=weight.shape[1], out_features=weight.shape[0]))
    return targets


def family_of(diffusion_model: nn.Module) -> str:
    """Family of a diffusion model: a UNet's from the input width of its first cross-attention `attn2.to_k`, Flux
    from its double-stream blocks."""
    modules = dict(diffusion_model.named_modules())
    if "double_blocks.0.img_attn.qkv" in modules:
        if "double_stream_modulation_img" in modules:
            raise ValueError("the model is a Flux.2 transformer, which HyperSubject does not support yet: load a "
                             "Flux.1 (dev, schnell or a fine-tune), SD1.5 or SDXL checkpoint")
        return "flux"
    for name, module in modules.items():
        if name.endswith("attn2.to_k") and getattr(module, "weight", None) is not None:
            width = module.weight.shape[1]
            if width not in UNET_CONTEXT_DIMS:
                known = ", ".join(f"{f} ({d}-d)" for d, f in UNET_CONTEXT_DIMS.items())
                raise ValueError(f"no known base-model family has a {width}-d text context; known: {known}")
            return UNET_CONTEXT_DIMS[width]
    raise ValueError("found neither a cross-attention layer (`attn2.to_k`) nor Flux double blocks in the model: "
                     "expected an SD1.5/SDXL-style UNet or a Flux.1 transformer (pass `model.diffusion_model`)")


def family_targets(diffusion_model: nn.Module) -> tuple[str, list[Target]]:
    """The model's family and that family's default target layers in it."""
    family = family_of(diffusion_model)
    return family, find_targets(diffusion_model, FAMILIES[family])
