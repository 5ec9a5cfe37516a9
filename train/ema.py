"""Exponential moving average of the hypernet's weights: the weights that are exported and sampled from."""
import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of `net` tracking its weights; the decay ramps up as (1 + t)/(10 + t) to `decay`."""

    def __init__(self, net: nn.Module, decay: float):
        self.net = copy.deepcopy(net).requires_grad_(False).eval()
        self.decay = decay

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        """Move the average toward `net` after optimizer step `step` (0-based)."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for average, param in zip(self.net.parameters(), net.parameters()):
            average.lerp_(param.detach(), 1 - decay)
        for average, buffer in zip(self.net.buffers(), net.buffers()):
            average.copy_(buffer)
