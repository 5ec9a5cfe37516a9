"""Weight-space measures of predicted LoRAs: the paper's L2 penalty on the predicted weights, and the distance to a
teacher LoRA (HyperDreamBooth's weight-space loss). Both from r×r Gram matrices, without forming any ΔW."""
import torch
from torch import Tensor

from .lora import PredictedLoRA


def lora_inner(a: PredictedLoRA, b: PredictedLoRA) -> Tensor:
    """Per-subject Σ_targets ⟨ΔW_a, ΔW_b⟩_F, shape [K]; the two may differ in rank and scale, not in targets.

    ⟨U D, U′ D′⟩_F = trace(Dᵀ Uᵀ U′ D′) = Σ (UᵀU′) ∘ (D D′ᵀ): O(r·r′(in+out)) per target instead of O(r·in·out).
    """
    total = 0.0
    for target in a.targets:
        gram_up = a.up[target.name].transpose(1, 2) @ b.up[target.name]  # [K, r, r′]
        gram_down = a.down[target.name] @ b.down[target.name].transpose(1, 2)  # [K, r, r′]
        total = total + (gram_up * gram_down).sum(dim=(1, 2))
    return a.scale * b.scale * torch.as_tensor(total)


def weight_l2(lora: PredictedLoRA) -> Tensor:
    """Per-subject Σ_targets ||scale·up@down||_F², shape [K].

    The penalty is on the product ΔW, not on the factors: (up·c, down/c) is the same LoRA for any c ≠ 0, and an L2 on
    the factors would push the net toward balancing c instead of shrinking the weight change itself.
    """
    return lora_inner(lora, lora)


def relative_distance(lora: PredictedLoRA, teacher: PredictedLoRA) -> Tensor:
    """Per-subject Σ_targets ||ΔW − ΔW_teacher||_F² / Σ_targets ||ΔW_teacher||_F², shape [K]: 1 for ΔW = 0."""
    teacher_l2 = weight_l2(teacher)
    return (weight_l2(lora) - 2 * lora_inner(lora, teacher) + teacher_l2) / teacher_l2
