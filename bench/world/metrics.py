"""Ground-truth metrics for generated toys: context alignment, subject fidelity and identity, diversity.

No learned judge: every number compares pixels with the exact rendering or with the prompted attributes.
Colour distances are RGB Euclidean divided by √3, so they lie in [0, 1].
"""
from itertools import combinations, permutations
from typing import Sequence

import numpy as np

from .align import AlignedPair, Segmented, align_to_truth, longest_side
from .contexts import EDGE_MARGIN, SIZE_EXTENT, Context
from .foreground import as_image, bounding_box, erode, foreground_mask, recover_background
from .render import lit_colour
from .subjects import COLOURS, Subject

_RGB_MAX = np.sqrt(3.0)
# Small vs large: split the toy's longest side half-way between the two sizes.
SIZE_SPLIT = sum(SIZE_EXTENT.values()) / 2
# Left/right: the centroid is off-centre by more than half the smallest left/right offset (the large toy's).
POSITION_SPLIT = (0.5 - max(SIZE_EXTENT.values()) / 2 - EDGE_MARGIN) / 2
OUTLINE_SKIP = 0.03  # erode the toy mask by this fraction of the width before reading its colours


def recover_context(image) -> dict[str, str | None]:
    """The context attributes an image shows; size and position are None when no toy is found."""
    image = as_image(image)
    background, lighting = recover_background(image)
    size, position = _recover_layout(foreground_mask(image))
    return {"background": background, "position": position, "size": size, "lighting": lighting}


def context_alignment(image, context: Context) -> dict[str, bool]:
    """Per-attribute agreement between the image and the prompted context, plus `all`."""
    shown = recover_context(image)
    result = {name: shown[name] == value for name, value in context.to_dict().items()}
    result["all"] = all(result.values())
    return result


def subject_fidelity(image, subject: Subject, context: Context) -> dict[str, float]:
    """Shape IoU after box alignment, colour and pattern errors, and `fidelity` = iou·(1-colour)·(1-pattern)."""
    pair = align_to_truth(Segmented.of(as_image(image)), subject, context)
    union = pair.gen_mask | pair.true_mask
    iou = float((pair.gen_mask & pair.true_mask).sum() / union.sum()) if union.any() else 0.0
    colour_error = _colour_error(pair, subject, context)
    pattern_error = float(pair.pixel_error[pair.true_mask].mean())
    fidelity = iou * (1 - colour_error) * (1 - pattern_error)
    return {"iou": iou, "colour_error": colour_error, "pattern_error": pattern_error, "fidelity": fidelity}


def subject_distance(image, subject: Subject, context: Context) -> float:
    """Mean colour error over the union of the aligned and the true toy masks; 0 for the exact rendering."""
    return _distance(Segmented.of(as_image(image)), subject, context)


def identity_accuracy(images: Sequence, true_subjects: Sequence[Subject], candidate_subjects: Sequence[Subject],
                      contexts: Sequence[Context]) -> float:
    """Fraction of images whose nearest candidate by `subject_distance` is the true subject."""
    if not len(images) == len(true_subjects) == len(contexts):
        raise ValueError(f"need one subject and one context per image, got {len(images)} images, "
                         f"{len(true_subjects)} subjects, {len(contexts)} contexts")
    missing = set(true_subjects) - set(candidate_subjects)
    if missing:
        raise ValueError(f"true subjects {sorted(s.id for s in missing)} are not among the candidates; add them")
    hits = sum(nearest_subject(image, candidate_subjects, context) == truth
               for image, truth, context in zip(images, true_subjects, contexts))
    return hits / len(images)


def nearest_subject(image, candidate_subjects: Sequence[Subject], context: Context) -> Subject:
    """The candidate whose rendering in `context` is nearest to the image by `subject_distance`."""
    generated = Segmented.of(as_image(image))
    distances = [_distance(generated, candidate, context) for candidate in candidate_subjects]
    return candidate_subjects[int(np.argmin(distances))]


def diversity(images: Sequence) -> float:
    """Mean pairwise mean-absolute pixel difference (LPIPS-free); 0 when all images are identical."""
    arrays = [as_image(image) for image in images]
    if len(arrays) < 2:
        raise ValueError(f"diversity needs at least 2 images of one prompt, got {len(arrays)}")
    return float(np.mean([np.abs(a - b).mean() for a, b in combinations(arrays, 2)]))


def _distance(generated: Segmented, subject: Subject, context: Context) -> float:
    """`subject_distance` for an already segmented image."""
    pair = align_to_truth(generated, subject, context)
    union = pair.gen_mask | pair.true_mask
    return float(pair.pixel_error[union].mean()) if union.any() else 1.0


def _colour_error(pair: AlignedPair, subject: Subject, context: Context) -> float:
    """Distance between the two dominant colours inside the generated toy and the subject's two lit colours."""
    interior = erode(pair.gen_mask, max(1, round(OUTLINE_SKIP * pair.gen_mask.shape[1])))
    pixels = pair.gen_image[interior if interior.any() else pair.gen_mask]
    if len(pixels) == 0:
        return 1.0
    found = _two_dominant_colours(pixels)
    wanted = [lit_colour(COLOURS[name], context) for name in (subject.body, subject.second)]
    errors = [np.mean([np.linalg.norm(f - w) for f, w in zip(order, wanted)]) for order in permutations(found)]
    return float(min(errors) / _RGB_MAX)


def _two_dominant_colours(pixels: np.ndarray, iterations: int = 10) -> np.ndarray:
    """2-medians clustering (robust to anti-aliased mixtures), seeded by the median and the pixel farthest from it."""
    first = np.median(pixels, axis=0)
    centres = np.stack([first, pixels[np.argmax(np.linalg.norm(pixels - first, axis=1))]])
    for _ in range(iterations):
        nearest = np.argmin(np.linalg.norm(pixels[:, None] - centres[None], axis=2), axis=1)
        centres = np.stack([_median_or(pixels[nearest == k], centres[k]) for k in (0, 1)])
    return centres


def _median_or(pixels: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Per-channel median of the pixels, or the fallback when there are none."""
    return np.median(pixels, axis=0) if len(pixels) else fallback


def _recover_layout(mask: np.ndarray) -> tuple[str | None, str | None]:
    """(size, position) of the toy in a mask: longest bounding-box side and centroid x, fractions of the width."""
    box = bounding_box(mask)
    if box is None:
        return None, None
    width = mask.shape[1]
    size = "small" if longest_side(box) / width < SIZE_SPLIT else "large"
    offset = (np.nonzero(mask)[1].mean() + 0.5) / width - 0.5
    position = "left" if offset < -POSITION_SPLIT else "right" if offset > POSITION_SPLIT else "center"
    return size, position
