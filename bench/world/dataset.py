"""Training and evaluation data from the miniature world: (reference, target) pairs and captioned PNG folders."""
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from .contexts import Context, prompt, random_context
from .render import render_with_coverage
from .subjects import CLASS_WORD, Subject


def pairs(subjects: Sequence[Subject], n: int, seed: int = 0) -> Iterator[tuple[Subject, Context, Context]]:
    """n deterministic (subject, reference context, target context) triples; the two contexts always differ."""
    if not subjects:
        raise ValueError("pairs needs at least one subject, got none")
    rng = np.random.default_rng(seed)
    for _ in range(n):
        subject = subjects[int(rng.integers(len(subjects)))]
        reference = random_context(rng)
        target = random_context(rng)
        while target == reference:
            target = random_context(rng)
        yield subject, reference, target


def write_subject_folders(root: str | Path, subjects: Sequence[Subject], images_per_subject: int, seed: int = 0,
                          size: int = 64, jitter: bool = True, prefix: str = "subject", masks: bool = False
                          ) -> list[Path]:
    """Write root/<prefix>_<id>/<k>.png in random contexts, each with a <k>.txt class-level caption and, with
    `masks`, the toy's coverage as <k>.mask.png (the trainer's subject_loss_weight); return the PNGs."""
    rng = np.random.default_rng(seed)
    written = []
    for subject in subjects:
        folder = Path(root) / f"{prefix}_{subject.id}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(images_per_subject):
            context = random_context(rng)
            image, coverage = render_with_coverage(subject, context, size, rng if jitter else None)
            save_png(image, folder / f"{k}.png")
            if masks:
                save_png(np.repeat(coverage[..., None], 3, axis=-1), folder / f"{k}.mask.png")
            (folder / f"{k}.txt").write_text(prompt(context, CLASS_WORD) + "\n")
            written.append(folder / f"{k}.png")
    return written


def save_png(image: np.ndarray, path: str | Path) -> None:
    """Save an H×W×3 float image in [0, 1] as an 8-bit PNG."""
    Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), "RGB").save(path)


def load_png(path: str | Path) -> np.ndarray:
    """Load a PNG as an H×W×3 float32 array in [0, 1]."""
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
