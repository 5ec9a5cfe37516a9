"""The output regularizer of the paper: an L2 penalty on the predicted weights."""
import torch
from torch import Tensor

from .lora import PredictedLoRA


def weight_l2(lora: PredictedLoRA) -> Tensor:
    """Per-subject Σ_targets ||scale·up@down||_F², shape [K], computed from r×r Gram matrices without forming ΔW.

    The penalty is on the product ΔW, not on the factors: (up·c, down/c) is the same LoRA for any c ≠ 0, and an L2 on
    the factors would push the net toward balancing c instead of shrinking the weight change itself. With
    ||U D||_F² = trace((UᵀU)(D Dᵀ)) it costs O(r²(in+out)) per target instead of O(r·in·out).
    """
    total = 0.0
    for target in lora.targets:
        up, down = lora.up[target.name], lora.down[target.name]  # [K, out, r], [K, r, in]
        gram_up = up.transpose(1, 2) @ up  # [K, r, r]
        gram_down = down @ down.transpose(1, 2)  # [K, r, r], symmetric
        total = total + (gram_up * gram_down).sum(dim=(1, 2))  # trace(A B) = Σ A ∘ Bᵀ
    return (lora.scale ** 2) * torch.as_tensor(total)
