"""The trainer's losses: the denoising MSE, weighted towards the subject where masks say where it is."""
import torch
import torch.nn.functional as F
from torch import Tensor


def denoising_loss(prediction: Tensor, target: Tensor, masks: Tensor | None, subject_loss_weight: float) -> Tensor:
    """MSE of the model's prediction against its target (ε, or Flux's velocity); with masks (B×H×W, 1 on the
    subject), each latent cell weighted by `subject_cell_weights`."""
    if masks is None or subject_loss_weight == 0:
        return F.mse_loss(prediction, target)
    weights = subject_cell_weights(masks.to(prediction.device), prediction.shape[-2:], subject_loss_weight)
    return weighted_mse(prediction, target, weights)


def subject_cell_weights(masks: Tensor, cells: tuple[int, int], subject_loss_weight: float) -> Tensor:
    """(B, 1, h, w) weights 1 + w·(each latent cell's mask coverage), so that the subject's cells count more."""
    return 1.0 + subject_loss_weight * F.adaptive_avg_pool2d(masks[:, None].to(torch.float32), cells)


def weighted_mse(prediction: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Squared error weighted per latent cell, weights scaled to mean 1 per image so the loss keeps its scale."""
    return ((prediction.float() - target.float()) ** 2 * (weights / weights.mean(dim=(1, 2, 3), keepdim=True))).mean()
