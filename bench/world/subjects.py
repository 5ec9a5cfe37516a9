"""Procedural subjects ("toys"): identity = outline shape × two colours × coarse pattern × proportion.

Every attribute is coarse enough to survive an 8× VAE down-sampling at 64 px (a small toy still spans
about 3–4 latent pixels), and every identity renders differently from every other one.
"""
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from itertools import product

import numpy as np

CLASS_WORD = "toy"

SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "cross")

# Saturated toy colours, at least 0.36 apart in RGB; near-black is reserved for the outline.
COLOURS = {
    "red": (0.85, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (1.00, 0.90, 0.10),
    "green": (0.10, 0.60, 0.15),
    "cyan": (0.00, 0.80, 0.85),
    "blue": (0.10, 0.20, 0.85),
    "purple": (0.55, 0.15, 0.70),
    "white": (1.00, 1.00, 1.00),
}

# Each pattern paints part of the body in the second colour; a plain toy would hide that colour and
# make two identities look the same, so there is no "none".
PATTERNS = ("left_right", "top_bottom", "spot", "band", "stripe")

# Height / width of the toy's bounding box; its longest side is set by the context's size.
ASPECTS = {"wide": 0.6, "square": 1.0, "tall": 1 / 0.6}


@dataclass(frozen=True)
class Subject:
    """One toy identity; `id` is its index in `all_subjects()`."""

    id: int
    shape: str
    body: str
    second: str
    pattern: str
    aspect: str

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Subject":
        """Inverse of `to_dict`; the id must match the attributes."""
        subject = cls(**data)
        if subject != subject_by_id(subject.id):
            raise ValueError(f"subject id {subject.id} is {subject_by_id(subject.id)}, not {subject}")
        return subject


@lru_cache(maxsize=1)
def all_subjects() -> tuple[Subject, ...]:
    """The whole identity space, in a fixed order (shape, body, second, pattern, aspect)."""
    combos = product(SHAPES, COLOURS, COLOURS, PATTERNS, ASPECTS)
    distinct = [c for c in combos if c[1] != c[2]]
    return tuple(Subject(i, *c) for i, c in enumerate(distinct))


def subject_by_id(subject_id: int) -> Subject:
    """The subject with that index."""
    subjects = all_subjects()
    if not 0 <= subject_id < len(subjects):
        raise ValueError(f"subject id must be in [0, {len(subjects)}), got {subject_id}")
    return subjects[subject_id]


def with_attributes(subject: Subject, **change: str) -> Subject:
    """The subject that differs from `subject` only in the given attributes (and its id)."""
    wanted = replace(subject, id=0, **change)
    match = next((s for s in all_subjects() if replace(s, id=0) == wanted), None)
    if match is None:
        raise ValueError(f"no subject has {change} with the rest of {subject}; body and second must differ")
    return match


def neighbours(subject: Subject) -> list[Subject]:
    """All subjects that differ from `subject` in exactly one attribute: the hardest identity candidates."""
    attributes = ("shape", "body", "second", "pattern", "aspect")
    return [other for other in all_subjects()
            if sum(getattr(other, name) != getattr(subject, name) for name in attributes) == 1]


def split_subjects(seed: int = 0, held_out_fraction: float = 0.1) -> tuple[list[Subject], list[Subject]]:
    """Deterministic disjoint (train, held_out) split of all subjects, each sorted by id."""
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    subjects = all_subjects()
    order = np.random.default_rng(seed).permutation(len(subjects))
    n_held = round(held_out_fraction * len(subjects))
    held = set(order[:n_held].tolist())
    train = [s for s in subjects if s.id not in held]
    held_out = [s for s in subjects if s.id in held]
    return train, held_out


def describe(subject: Subject) -> str:
    """Human-readable name, e.g. 'wide red circle with blue spot'."""
    part = {"left_right": "right half", "top_bottom": "bottom half"}.get(subject.pattern, subject.pattern)
    return f"{subject.aspect} {subject.body} {subject.shape} with {subject.second} {part}"
