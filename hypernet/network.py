"""The hypernetwork: (optional embedded) image encoder → weight decoder → a PredictedLoRA per subject."""
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import HyperNetConfig
from .decoder import WeightDecoder
from .encoders import EmbeddedEncoder
from .lora import PredictedLoRA


class HyperNet(nn.Module):
    """Predicts LoRA factors for the config's target layers from subject tokens, in one forward pass."""

    def __init__(self, config: HyperNetConfig):
        super().__init__()
        self.config = config
        self.encoder = EmbeddedEncoder(config.encoder) if config.encoder.kind == "embedded" else None
        self.decoder = WeightDecoder(config)

    def encode(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """IMAGE batch B×H×W×C in [0,1] → tokens B×N×D with the embedded encoder."""
        if self.encoder is None:
            spec = self.config.encoder
            raise ValueError(f"this hypernet reads CLIP vision tokens ({spec.clip_vision_size}, {spec.token_dim}-d), "
                             f"not images: load a {spec.clip_vision_size} CLIP_VISION model and pass its penultimate "
                             f"hidden states as tokens")
        return self.encoder(images, mask)

    def forward(self, tokens: Tensor) -> PredictedLoRA:
        """Tokens [K, N, D] of K subjects → their LoRAs."""
        dim = self.config.encoder.token_dim
        if tokens.ndim != 3 or tokens.shape[-1] != dim:
            raise ValueError(f"expected subject tokens [K, N, {dim}], got shape {tuple(tokens.shape)}; "
                             f"this hypernet was trained on {self.config.encoder.kind} tokens of width {dim}")
        down, up = self.decoder(tokens)
        c = self.config
        return PredictedLoRA(list(c.targets), down, up, rank=c.rank, alpha=c.alpha, family=c.family)


@dataclass(frozen=True)
class ParameterCount:
    """Sizes of a hypernet: trainable numbers in decoder and encoder, and LoRA numbers predicted per subject."""

    decoder: int
    encoder: int
    outputs: int


def count_parameters(config: HyperNetConfig) -> ParameterCount:
    """Parameter and output counts of the net a config describes (built on the meta device, no memory used)."""
    with torch.device("meta"):
        net = HyperNet(config)
    encoder = 0 if net.encoder is None else sum(p.numel() for p in net.encoder.parameters())
    outputs = sum(config.rank * (t.in_features + t.out_features) for t in config.targets)
    return ParameterCount(sum(p.numel() for p in net.decoder.parameters()), encoder, outputs)
