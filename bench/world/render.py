"""Exact, deterministic rendering of a toy in a context (supersampled ×4, box-filtered)."""
from dataclasses import dataclass

import numpy as np

from .contexts import LIGHTINGS, SIZE_EXTENT, Context, centre_x, lit_background
from .subjects import COLOURS, Subject

SUPERSAMPLE = 4
OUTLINE_WIDTH = 0.02  # fraction of the image width; keeps a toy visible on a background of a similar colour
OUTLINE_RGB = (0.08, 0.08, 0.08)
JITTER_SHIFT = 0.02  # at most this fraction of the width, in x and in y, only when an rng is passed
JITTER_DEGREES = 10.0


@dataclass(frozen=True)
class Placement:
    """Where the toy's bounding box lies: centre and half extents as fractions of the width, angle in radians."""

    cx: float
    cy: float
    half_w: float
    half_h: float
    angle: float = 0.0


def placement(context: Context, rng: np.random.Generator | None = None) -> Placement:
    """The exact placement the context names, plus a small random shift and rotation when rng is given."""
    half = SIZE_EXTENT[context.size] / 2
    if rng is None:
        return Placement(centre_x(context), 0.5, half, half)
    dx, dy = rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, size=2)
    angle = np.deg2rad(rng.uniform(-JITTER_DEGREES, JITTER_DEGREES))
    return Placement(centre_x(context) + dx, 0.5 + dy, half, half, float(angle))


def render(subject: Subject, context: Context, size: int = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """The toy in its context: size×size×3 float32 in [0, 1]."""
    return render_with_coverage(subject, context, size, rng)[0]


def render_with_coverage(subject: Subject, context: Context, size: int = 64,
                         rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`render`, and the fraction of each pixel the toy covers (outline included, size×size float32)."""
    outer, inner, second = _coverages(placement(context, rng), size)
    body_rgb = lit_colour(COLOURS[subject.body], context)
    second_rgb = lit_colour(COLOURS[subject.second], context)
    outline_rgb = lit_colour(OUTLINE_RGB, context)
    image = (lit_background(context) * (1 - outer) + outline_rgb * (outer - inner)
             + body_rgb * (inner - second) + second_rgb * second)
    return np.clip(image, 0.0, 1.0).astype(np.float32), outer[..., 0]


def lit_colour(rgb: tuple[float, float, float], context: Context) -> np.ndarray:
    """An RGB colour under the context's lighting."""
    return np.asarray(rgb, np.float32) * LIGHTINGS[context.lighting]


def render_mask(subject: Subject, context: Context, size: int = 64,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Pixels at least half covered by the toy (outline included): size×size bool; same rng state as `render`."""
    outer, _, _ = _coverages(placement(context, rng), size)
    return outer[..., 0] >= 0.5


def _coverages(place: Placement, size: int) -> tuple[np.ndarray, ...]:
    """Per-pixel covered fractions of the outlined square, its fill, and its right (second-colour) half (size×size×1)."""
    rows, cols = _window(place, size)
    u, v = _local_coordinates(place, size, rows, cols)
    # The fill is the outline shape shrunk by the outline width on each side.
    ui = u * place.half_w / (place.half_w - OUTLINE_WIDTH)
    vi = v * place.half_h / (place.half_h - OUTLINE_WIDTH)
    outer = _inside_square(u, v)
    inner = _inside_square(ui, vi)
    second = inner & (ui > 0)
    coverages = []
    for mask in (outer, inner, second):
        full = np.zeros((size, size, 1), np.float32)
        full[rows, cols, 0] = _box_downsample(mask, SUPERSAMPLE)
        coverages.append(full)
    return tuple(coverages)


def _window(place: Placement, size: int) -> tuple[slice, slice]:
    """Rows and columns of output pixels that the toy can touch (only those are supersampled)."""
    cos, sin = abs(np.cos(place.angle)), abs(np.sin(place.angle))
    reach_x = place.half_w * cos + place.half_h * sin  # half extents of the rotated box
    reach_y = place.half_w * sin + place.half_h * cos
    return _span(place.cy, reach_y, size), _span(place.cx, reach_x, size)


def _span(centre: float, reach: float, size: int) -> slice:
    """Pixel indices covering [centre - reach, centre + reach] (fractions of the width), one pixel of slack."""
    first = int(np.floor((centre - reach) * size)) - 1
    last = int(np.ceil((centre + reach) * size)) + 1
    return slice(max(0, first), min(size, last))


def _local_coordinates(place: Placement, size: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Supersampled pixel centres of a window in the toy's frame, where its box is [-1, 1]² (v points down)."""
    n = size * SUPERSAMPLE
    x = (np.arange(cols.start * SUPERSAMPLE, cols.stop * SUPERSAMPLE, dtype=np.float32)[None, :] + 0.5) / n
    y = (np.arange(rows.start * SUPERSAMPLE, rows.stop * SUPERSAMPLE, dtype=np.float32)[:, None] + 0.5) / n
    dx, dy = x - place.cx, y - place.cy
    shape = (y.shape[0], x.shape[1])
    if place.angle == 0.0:
        return np.broadcast_to(dx / place.half_w, shape), np.broadcast_to(dy / place.half_h, shape)
    cos, sin = np.float32(np.cos(place.angle)), np.float32(np.sin(place.angle))
    return (dx * cos + dy * sin) / place.half_w, (dy * cos - dx * sin) / place.half_h


def _inside_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether (u, v) lies inside the toy's square, which fills [-1, 1]²."""
    return (np.abs(u) <= 1) & (np.abs(v) <= 1)


def _box_downsample(mask: np.ndarray, factor: int) -> np.ndarray:
    """Mean of a bool mask over factor×factor blocks, as float32."""
    h, w = mask.shape[0] // factor, mask.shape[1] // factor
    counts = mask.view(np.uint8).reshape(h, factor, w, factor).sum(axis=(1, 3), dtype=np.uint16)
    return counts.astype(np.float32) / factor**2
