"""A batch of predicted LoRAs (one per subject) and its export to a standard kohya LoRA state dict."""
from dataclasses import dataclass

import torch
from torch import Tensor

from .targets import PREFIX, Target


@dataclass
class PredictedLoRA:
    """LoRA factors for K subjects: `down[name]` is [K, r, in], `up[name]` is [K, out, r]; ΔW = (alpha/r)·up@down."""

    targets: list[Target]
    down: dict[str, Tensor]
    up: dict[str, Tensor]
    rank: int
    alpha: float
    family: str

    @property
    def scale(self) -> float:
        """The LoRA scale alpha / rank."""
        return self.alpha / self.rank

    @property
    def num_subjects(self) -> int:
        """K, the number of subjects in this batch of predictions."""
        return next(iter(self.down.values())).shape[0]

    def subject(self, k: int) -> "PredictedLoRA":
        """The LoRA of subject k alone (K = 1)."""
        if not -self.num_subjects <= k < self.num_subjects:
            raise IndexError(f"subject {k} out of range: this LoRA holds {self.num_subjects} subjects")
        return self.select(slice(k, k + 1 or None))

    def select(self, indices: Tensor | slice) -> "PredictedLoRA":
        """The LoRAs of the subjects `indices` (1-D, repeats allowed, or a slice), in that order."""
        return PredictedLoRA(self.targets, {n: d[indices] for n, d in self.down.items()},
                             {n: u[indices] for n, u in self.up.items()}, self.rank, self.alpha, self.family)

    def delta(self, name: str, k: int = 0) -> Tensor:
        """ΔW of target `name` for subject k: scale·up@down, shape [out, in]."""
        return self.scale * (self.up[name][k] @ self.down[name][k])

    def to(self, *args, **kwargs) -> "PredictedLoRA":
        """Move/cast every factor, like `Tensor.to`."""
        return PredictedLoRA(self.targets, {n: d.to(*args, **kwargs) for n, d in self.down.items()},
                             {n: u.to(*args, **kwargs) for n, u in self.up.items()}, self.rank, self.alpha, self.family)


def kohya_stem(name: str) -> str:
    """kohya LDM-style key stem of a target: `diffusion_model.a.b` → `lora_unet_a_b` (ComfyUI maps it back)."""
    if not name.startswith(PREFIX):
        raise ValueError(f"target {name!r} does not start with {PREFIX!r}; cannot name it in a kohya LoRA")
    return "lora_unet_" + name[len(PREFIX):].replace(".", "_")


def to_lora_state_dict(lora: PredictedLoRA, k: int = 0) -> dict[str, Tensor]:
    """Subject k as a standard LoRA state dict (`.lora_down.weight`, `.lora_up.weight`, `.alpha`) for LoraLoader."""
    sd = {}
    for target in lora.targets:
        stem = kohya_stem(target.name)
        # clone: factors may be views of one decoder output, and safetensors refuses tensors sharing storage
        sd[f"{stem}.lora_down.weight"] = lora.down[target.name][k].detach().clone(memory_format=torch.contiguous_format)
        sd[f"{stem}.lora_up.weight"] = lora.up[target.name][k].detach().clone(memory_format=torch.contiguous_format)
        sd[f"{stem}.alpha"] = torch.tensor(float(lora.alpha))
    return sd
