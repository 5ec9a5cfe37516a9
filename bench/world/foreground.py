"""Read an image back: its (background, lighting) from the border, and the toy's mask and bounding box."""
from functools import lru_cache

import numpy as np

from .contexts import BACKGROUNDS, LIGHTINGS

FOREGROUND_DISTANCE = 0.15  # RGB distance from the background (bright light) that counts as toy; × lighting


def as_image(image) -> np.ndarray:
    """A square H×W×3 float32 array in [0, 1] (uint8 and torch tensors accepted)."""
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if array.dtype == np.uint8:
        array = array / 255.0
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] != array.shape[1]:
        raise ValueError(f"expected one square H×W×3 image, got shape {array.shape}; "
                         "pass images one at a time, channels last")
    return array.astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def _lit_backgrounds() -> tuple[list[tuple[str, str]], np.ndarray]:
    """Every (background, lighting) pair and its RGB."""
    names = [(b, light) for b in BACKGROUNDS for light in LIGHTINGS]
    colours = np.array([np.array(BACKGROUNDS[b]) * LIGHTINGS[light] for b, light in names], np.float32)
    return names, colours


def recover_background(image: np.ndarray) -> tuple[str, str]:
    """(background, lighting) whose colour is nearest the median of the one-pixel image border."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    names, colours = _lit_backgrounds()
    distances = np.linalg.norm(colours - np.median(border, axis=0), axis=1)
    return names[int(np.argmin(distances))]


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Pixels far from the recovered background colour, de-speckled and with enclosed holes filled."""
    background, lighting = recover_background(image)
    colour = np.asarray(BACKGROUNDS[background], np.float32) * LIGHTINGS[lighting]
    far = np.linalg.norm(image - colour, axis=2) > FOREGROUND_DISTANCE * LIGHTINGS[lighting]
    return _fill_enclosed(_majority_3x3(far))


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), inclusive, of the True pixels; None when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose whole (2·radius+1)² neighbourhood is True."""
    for _ in range(radius):
        mask = _neighbour_count(mask) == 9
    return mask


def _majority_3x3(mask: np.ndarray) -> np.ndarray:
    """3×3 majority vote: removes isolated pixels and one-pixel speckle."""
    return _neighbour_count(mask) >= 5


def _neighbour_count(mask: np.ndarray) -> np.ndarray:
    """Number of True pixels in each 3×3 neighbourhood (outside the image counts as False)."""
    padded = np.pad(mask, 1).astype(np.uint8)
    h, w = mask.shape
    return sum(padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))


def _fill_enclosed(mask: np.ndarray) -> np.ndarray:
    """Add pixels with mask on their left, right, above and below: fills holes, keeps concave notches open."""
    enclosed = np.ones_like(mask)
    for axis in (0, 1):
        before = np.maximum.accumulate(mask, axis=axis)
        after = np.flip(np.maximum.accumulate(np.flip(mask, axis), axis=axis), axis)
        enclosed &= before & after
    return mask | enclosed
