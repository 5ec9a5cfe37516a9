"""Image encoders: map a ComfyUI IMAGE batch (B×H×W×C in [0,1]) to tokens B×N×D for the weight decoder.

Two kinds:
- "embedded": a small CNN stored in the hypernet checkpoint (`EmbeddedEncoder`), trained with the decoder;
- "clip_vision": a ComfyUI CLIP_VISION model; the node supplies its penultimate hidden states as tokens
  (1024-d for ViT-L/14), so this package only needs `token_dim` and never loads CLIP itself.
"""
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("embedded", "clip_vision")
# Width of the penultimate hidden states of the CLIP vision towers ComfyUI loads.
CLIP_VISION_TOKEN_DIMS = {"vit-l-14": 1024, "vit-h-14": 1280, "vit-g-14": 1664}
COMBINE_MODES = ("mean", "concat")
PATCH = 16  # the embedded CNN downsamples by 2⁴


@dataclass(frozen=True)
class EncoderSpec:
    """Which encoder produces the tokens, at what input size and token width (`width`: embedded CNN channels)."""

    kind: str
    image_size: int
    token_dim: int
    clip_vision_size: str | None = None
    width: int = 64

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"encoder kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "embedded" and self.image_size % PATCH:
            raise ValueError(f"embedded encoder image_size must be a multiple of {PATCH}, got {self.image_size}")
        if self.kind == "clip_vision":
            expected = CLIP_VISION_TOKEN_DIMS.get(self.clip_vision_size)
            if expected is None:
                raise ValueError(f"clip_vision encoder needs clip_vision_size in {sorted(CLIP_VISION_TOKEN_DIMS)}, "
                                 f"got {self.clip_vision_size!r}")
            if expected != self.token_dim:
                raise ValueError(f"CLIP vision {self.clip_vision_size} gives {expected}-d tokens, "
                                 f"but token_dim is {self.token_dim}")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EncoderSpec":
        """Inverse of `to_dict`."""
        return cls(**d)


def to_rgb(images: Tensor, mask: Tensor | None = None) -> Tensor:
    """B×H×W×C (C = 1, 2, 3 or 4) → B×H×W×3; alpha (or `mask`, B×H×W, 1 = keep) composites onto mid grey."""
    if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"expected an IMAGE batch B×H×W×C with C in 1..4, got shape {tuple(images.shape)}")
    channels = images.shape[-1]
    alpha = images[..., -1:] if channels in (2, 4) else None
    rgb = images[..., : 3 if channels >= 3 else 1].expand(*images.shape[:-1], 3)
    if mask is not None:
        if tuple(mask.shape[-2:]) != tuple(images.shape[1:3]):
            raise ValueError(f"mask is {tuple(mask.shape[-2:])} pixels but the images are {tuple(images.shape[1:3])}; "
                             f"resize the mask to the image size")
        mask = mask.to(images).reshape(-1, *images.shape[1:3], 1).expand(images.shape[0], -1, -1, -1)
        alpha = mask if alpha is None else alpha * mask
    return rgb if alpha is None else rgb * alpha + 0.5 * (1 - alpha)


def resize_center_crop(images: Tensor, size: int) -> Tensor:
    """B×H×W×C → B×size×size×C: shorter side to `size` (antialiased bilinear), then the centre square."""
    height, width = images.shape[1:3]
    if (height, width) == (size, size):
        return images
    s = size / min(height, width)
    new_h, new_w = max(size, round(height * s)), max(size, round(width * s))
    x = F.interpolate(images.movedim(-1, 1), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[:, :, top:top + size, left:left + size].movedim(1, -1)


class EmbeddedEncoder(nn.Module):
    """A small CNN (4 stride-2 conv blocks, GroupNorm+SiLU) giving a (S/16)² grid of tokens plus learned positions."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        w = spec.width
        chans = [3, w, w, 2 * w, 2 * w]
        blocks = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.convs = nn.Sequential(*blocks)
        self.proj = nn.Conv2d(chans[-1], spec.token_dim, 1)
        n_tokens = (spec.image_size // PATCH) ** 2
        self.pos = nn.Parameter(torch.randn(n_tokens, spec.token_dim) * 0.02)

    def preprocess(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """What the encoder sees: RGB, shorter side resized to image_size, centre-cropped; B×S×S×3 in [0,1]."""
        return resize_center_crop(to_rgb(images, mask), self.spec.image_size).clamp(0, 1)

    def forward(self, images: Tensor, mask: Tensor | None = None) -> Tensor:
        """IMAGE batch B×H×W×C in [0,1] → tokens B×N×D."""
        x = self.preprocess(images.to(self.pos), mask).movedim(-1, 1) * 2 - 1
        tokens = self.proj(self.convs(x)).flatten(2).transpose(1, 2)  # [B, N, D]
        return tokens + self.pos


def combine_references(tokens: Tensor, mode: str) -> Tensor:
    """Tokens of M reference images [M, N, D] → one subject [1, N', D]: "mean" averages, "concat" joins along N."""
    if tokens.ndim != 3:
        raise ValueError(f"expected reference tokens [M, N, D], got shape {tuple(tokens.shape)}")
    if mode == "mean":
        return tokens.mean(dim=0, keepdim=True)
    if mode == "concat":
        return tokens.reshape(1, -1, tokens.shape[-1])
    raise ValueError(f"unknown combine mode {mode!r}; expected one of {COMBINE_MODES}")
