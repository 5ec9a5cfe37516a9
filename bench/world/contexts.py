"""Contexts named by a class-level prompt: background colour, position, size and lighting.

Background and lighting are global (cheap to learn); position and size are spatial. Each is measured
on its own by `metrics.context_alignment`.
"""
import re
from dataclasses import asdict, dataclass
from itertools import product

import numpy as np

from .subjects import CLASS_WORD

# Light tints of distinct hues, at least 0.33 apart; also at least 0.30 from every toy colour, and the
# twelve (background, lighting) colours stay at least 0.18 apart, so the border alone names both.
BACKGROUNDS = {
    "blue": (0.40, 0.60, 1.00),
    "green": (0.50, 0.90, 0.35),
    "yellow": (0.95, 0.90, 0.40),
    "pink": (1.00, 0.50, 0.70),
    "purple": (0.70, 0.45, 0.95),
    "grey": (0.60, 0.60, 0.60),
}
POSITIONS = ("left", "center", "right")
SIZES = ("small", "large")
LIGHTINGS = {"bright": 1.0, "dim": 0.55}  # factor on every pixel

# Longest side of the toy as a fraction of the image width ("small" stays >= 40 %).
SIZE_EXTENT = {"small": 0.45, "large": 0.70}
EDGE_MARGIN = 0.04  # gap between a left/right toy and the image edge, fraction of the width

_POSITION_WORDS = {"left": "at the left", "center": "in the center", "right": "at the right"}
_PROMPT = re.compile(
    r"^an? (?P<word>.+?) on a (?P<background>\w+) background, (?P<position>at the left|in the center|at the right), "
    r"(?P<size>\w+), (?P<lighting>\w+) light$"
)


@dataclass(frozen=True)
class Context:
    """Where and how a toy is shown; every field is one prompt attribute."""

    background: str
    position: str
    size: str
    lighting: str

    def __post_init__(self):
        for name, allowed in (("background", BACKGROUNDS), ("position", POSITIONS), ("size", SIZES),
                              ("lighting", LIGHTINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"context {name} must be one of {list(allowed)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Context":
        """Inverse of `to_dict`."""
        return cls(**data)


def prompt(context: Context, subject_word: str = CLASS_WORD) -> str:
    """Class-level prompt, e.g. 'a toy on a blue background, at the left, small, dim light'."""
    return (f"a {subject_word} on a {context.background} background, {_POSITION_WORDS[context.position]}, "
            f"{context.size}, {context.lighting} light")


def parse_prompt(text: str) -> Context:
    """Inverse of `prompt` (any subject word)."""
    match = _PROMPT.match(text.strip())
    if match is None:
        raise ValueError(f"expected a prompt like {prompt(all_contexts()[0])!r}, got {text!r}")
    position = {words: name for name, words in _POSITION_WORDS.items()}[match["position"]]
    return Context(match["background"], position, match["size"], match["lighting"])


def all_contexts() -> list[Context]:
    """Every context, in a fixed order."""
    return [Context(*c) for c in product(BACKGROUNDS, POSITIONS, SIZES, LIGHTINGS)]


def random_context(rng: np.random.Generator) -> Context:
    """A context with every attribute drawn uniformly."""
    return Context(*(_pick(rng, list(options)) for options in (BACKGROUNDS, POSITIONS, SIZES, LIGHTINGS)))


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    """One option, uniformly."""
    return options[int(rng.integers(len(options)))]


def centre_x(context: Context) -> float:
    """Horizontal centre of the toy, fraction of the width: left/right toys sit EDGE_MARGIN from the edge."""
    offset = 0.5 - SIZE_EXTENT[context.size] / 2 - EDGE_MARGIN
    return 0.5 + {"left": -offset, "center": 0.0, "right": offset}[context.position]


def lit_background(context: Context) -> np.ndarray:
    """RGB of the background under the context's lighting."""
    return np.asarray(BACKGROUNDS[context.background], np.float32) * LIGHTINGS[context.lighting]
