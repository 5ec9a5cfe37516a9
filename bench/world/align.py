"""Put a generated toy onto the exact rendering of a subject: segment both, then match their bounding boxes."""
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .contexts import Context
from .foreground import bounding_box, foreground_mask
from .render import render
from .subjects import Subject

_RGB_MAX = np.sqrt(3.0)


@dataclass(frozen=True)
class Segmented:
    """An image with its toy mask and the mask's bounding box (None when no toy is found)."""

    image: np.ndarray
    mask: np.ndarray
    box: tuple[int, int, int, int] | None

    @classmethod
    def of(cls, image: np.ndarray) -> "Segmented":
        """Segment an H×W×3 float image."""
        mask = foreground_mask(image)
        return cls(image, mask, bounding_box(mask))


@dataclass(frozen=True)
class AlignedPair:
    """The generated image moved into the true rendering's frame, next to the true rendering."""

    gen_image: np.ndarray
    gen_mask: np.ndarray
    true_image: np.ndarray
    true_mask: np.ndarray

    @property
    def pixel_error(self) -> np.ndarray:
        """Per-pixel RGB distance divided by √3, in [0, 1]."""
        return np.linalg.norm(self.gen_image - self.true_image, axis=2) / _RGB_MAX


def align_to_truth(generated: Segmented, subject: Subject, context: Context) -> AlignedPair:
    """Move the generated toy onto the true one: box centre onto box centre, longest side onto longest side.

    One scale for both axes, so a wide toy still differs from a square one; nearest-neighbour resampling.
    """
    truth = true_segmented(subject, context, generated.image.shape[0])
    if generated.box is None or truth.box is None:
        return AlignedPair(generated.image, generated.mask, truth.image, truth.mask)
    scale = longest_side(generated.box) / longest_side(truth.box)
    rows = _source_indices(generated.box[0::2], truth.box[0::2], scale, generated.image.shape[0])
    cols = _source_indices(generated.box[1::2], truth.box[1::2], scale, generated.image.shape[1])
    grid = np.ix_(rows, cols)
    return AlignedPair(generated.image[grid], generated.mask[grid], truth.image, truth.mask)


@lru_cache(maxsize=8192)
def true_segmented(subject: Subject, context: Context, size: int) -> Segmented:
    """The exact rendering, segmented; cached, since identity metrics compare every image with many candidates."""
    truth = Segmented.of(render(subject, context, size=size))
    for array in (truth.image, truth.mask):
        array.flags.writeable = False
    return truth


def longest_side(box: tuple[int, int, int, int]) -> int:
    """Longest side of an inclusive (top, left, bottom, right) box, in pixels."""
    return max(box[2] - box[0] + 1, box[3] - box[1] + 1)


def _source_indices(gen_span: tuple[int, int], true_span: tuple[int, int], scale: float, n: int) -> np.ndarray:
    """For each pixel along one axis, the generated pixel that the centre-to-centre map sends onto it."""
    gen_centre, true_centre = sum(gen_span) / 2, sum(true_span) / 2
    source = gen_centre + (np.arange(n) - true_centre) * scale
    return np.clip(np.round(source), 0, n - 1).astype(np.intp)
