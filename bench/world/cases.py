"""Evaluation cases of the miniature world: held-out subjects, a reference image each, and prompts that ask for
another background than the reference shows."""
from dataclasses import dataclass

import numpy as np

from .contexts import Context, random_context
from .render import render
from .subjects import Subject, split_subjects


@dataclass(frozen=True)
class Case:
    """A held-out subject, its reference image (one context) and the prompts that ask for other backgrounds."""

    subject: Subject
    reference_context: Context
    reference: np.ndarray
    prompts: tuple[Context, ...]


def make_cases(n: int, n_prompts: int, seed: int) -> list[Case]:
    """n held-out subjects; each prompt's background differs from the reference image's."""
    rng = np.random.default_rng(seed)
    _, held_out = split_subjects()
    cases = []
    for index in rng.choice(len(held_out), n, replace=False):
        subject, reference_context = held_out[int(index)], random_context(rng)
        prompts = []
        while len(prompts) < n_prompts:
            context = random_context(rng)
            if context.background != reference_context.background and context not in prompts:
                prompts.append(context)
        cases.append(Case(subject, reference_context, render(subject, reference_context), tuple(prompts)))
    return cases
