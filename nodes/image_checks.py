"""Which subject images are unusable, and the on_bad_input policy that decides what happens to them."""
import torch
from torch import Tensor

POLICIES = ("error", "skip", "pass_through")
MIN_SIDE = 8


def degenerate_reason(image: Tensor) -> str | None:
    """Why one H×W×C image cannot show a subject (too small, not finite, a single flat colour), or None."""
    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        return f"it is {width}×{height} pixels (at least {MIN_SIDE}×{MIN_SIDE} needed)"
    if not torch.isfinite(image).all():
        return "it holds NaN or infinite values"
    if image[..., :3].std() < 1e-3:
        return "it is a single flat colour"
    return None


def usable_indices(images: Tensor, policy: str) -> tuple[list[int], list[str]]:
    """Indices of the images the policy lets through, and a note per unusable one; 'error' raises on the first."""
    if policy not in POLICIES:
        raise ValueError(f"on_bad_input must be one of {POLICIES}, got {policy!r}")
    keep, notes = [], []
    for index, image in enumerate(images):
        reason = degenerate_reason(image)
        if reason is None or policy == "pass_through":
            keep.append(index)
        if reason is not None:
            note = f"subject image {index} is unusable: {reason}"
            if policy == "error":
                raise ValueError(f"{note}. Give a real picture of the subject, or set on_bad_input to 'skip' "
                                 f"(drop such images; no image left means no personalization) or 'pass_through'.")
            notes.append(note)
    return keep, notes
