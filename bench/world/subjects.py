"""Procedural subjects ("toys"): identity = body colour × second colour, the two halves of an outlined square.

World v2 keeps only attributes that survive the world VAE at 64 px (colours and halves do; outlines, corners and
thin patterns did not in world v1), so that identity is limited by what the models learn, not by what the VAE keeps.
"""
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from itertools import product

import numpy as np

CLASS_WORD = "toy"

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
ATTRIBUTES = ("body", "second")
HELD_OUT = 24  # identities no model ever trains on: the evaluation's candidates


@dataclass(frozen=True)
class Subject:
    """One toy identity: left half in the body colour, right half in the second; `id` indexes `all_subjects()`."""

    id: int
    body: str
    second: str

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
    """The whole identity space, in a fixed order: every ordered pair of two different colours (56)."""
    pairs = [(body, second) for body, second in product(COLOURS, COLOURS) if body != second]
    return tuple(Subject(i, *pair) for i, pair in enumerate(pairs))


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
    return [other for other in all_subjects()
            if sum(getattr(other, name) != getattr(subject, name) for name in ATTRIBUTES) == 1]


def split_subjects(seed: int = 0, held_out: int = HELD_OUT) -> tuple[list[Subject], list[Subject]]:
    """Deterministic disjoint (train, held_out) split of all subjects, each sorted by id.

    Every colour stays in the training half both as a body and as a second colour, so a held-out toy is a new
    combination of known attributes (as one's own dog is for a model that knows dogs)."""
    subjects = all_subjects()
    if not 0 <= held_out < len(subjects):
        raise ValueError(f"held_out must be in [0, {len(subjects)}), got {held_out}")
    rng = np.random.default_rng(seed)
    while True:
        held = set(rng.permutation(len(subjects))[:held_out].tolist())
        train = [s for s in subjects if s.id not in held]
        if all({getattr(s, name) for s in train} == set(COLOURS) for name in ATTRIBUTES):
            return train, [s for s in subjects if s.id in held]


SECOND_REPEATS = 4  # how often a description names the second colour (see `describe`)


def describe(subject: Subject) -> str:
    """The identity in words, as the base model learned it: 'red toy with right half blue blue blue blue'.

    The world's random CLIP-L lets the first colour word dominate every later token (in 'a red and blue toy on …' the
    tokens after the description carry 43–71 % of their variance from the body colour, 27–39 % from the second),
    so a base model trained on that wording drew the training toys right and the held-out toys' second colour
    poorly: it had learned colour pairs, not colours. Naming the second colour four times gives it 72–78 % of the
    later tokens, as emphasis does in a real prompt; the body colour keeps the clean early tokens."""
    return f"{subject.body} {CLASS_WORD} with right half {' '.join([subject.second] * SECOND_REPEATS)}"
