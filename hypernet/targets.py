"""Target layers: which Linear modules of a diffusion model the hypernetwork predicts a LoRA for."""
import re
from dataclasses import dataclass

from torch import nn

PREFIX = "diffusion_model."
# Self- and cross-attention projections of every transformer block (ComfyUI/LDM module names).
ATTENTION_PATTERN = r"transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$"


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


@dataclass(frozen=True)
class FamilySpec:
    """A base-model family: its text-context width, UNet base width and default target pattern."""

    context_dim: int
    model_channels: int
    pattern: str = ATTENTION_PATTERN


FAMILIES = {
    "sd15": FamilySpec(context_dim=768, model_channels=320, pattern=ATTENTION_PATTERN),
    "sdxl": FamilySpec(context_dim=2048, model_channels=320, pattern=ATTENTION_PATTERN),
}


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


def family_for_context_dim(context_dim: int) -> str:
    """Family name whose text context width is `context_dim`."""
    for family, spec in FAMILIES.items():
        if spec.context_dim == context_dim:
            return family
    known = ", ".join(f"{f} ({s.context_dim}-d)" for f, s in FAMILIES.items())
    raise ValueError(f"no known base-model family has a {context_dim}-d text context; known: {known}")


def family_of(diffusion_model: nn.Module) -> str:
    """Family of a diffusion model, read from the input width of its first cross-attention `attn2.to_k`."""
    for name, module in diffusion_model.named_modules():
        if name.endswith("attn2.to_k") and getattr(module, "weight", None) is not None:
            return family_for_context_dim(module.weight.shape[1])
    raise ValueError("found no cross-attention layer (`attn2.to_k`) in the model: expected an SD1.5/SDXL-style UNet "
                     "(pass `model.diffusion_model`)")
