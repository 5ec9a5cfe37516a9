"""The hypernetwork's architecture config: stored in every checkpoint, enough to rebuild the net."""
from dataclasses import dataclass, fields

from .encoders import EncoderSpec
from .targets import FAMILIES, Target


@dataclass(frozen=True, kw_only=True)
class HyperNetConfig:
    """Base family and target layers, LoRA rank/alpha, weight-decoder size and the image encoder."""

    family: str
    targets: tuple[Target, ...]
    rank: int = 4
    alpha: float = 4.0
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    mlp_ratio: int = 4
    encoder: EncoderSpec

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.family not in FAMILIES:
            raise ValueError(f"unknown base-model family {self.family!r}; expected one of {sorted(FAMILIES)}")
        if not self.targets:
            raise ValueError("a hypernet needs at least one target layer; find_targets found none in the model")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError("target layer names must be unique; got duplicates")
        if self.rank < 1 or self.n_layers < 0 or self.n_heads < 1 or self.d_model % self.n_heads:
            raise ValueError(f"need rank ≥ 1, n_layers ≥ 0 and d_model divisible by n_heads; got rank {self.rank}, "
                             f"n_layers {self.n_layers}, d_model {self.d_model}, n_heads {self.n_heads}")

    def to_dict(self) -> dict:
        """JSON-serialisable form; targets as [name, in_features, out_features]."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["targets"] = [[t.name, t.in_features, t.out_features] for t in self.targets]
        d["encoder"] = self.encoder.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HyperNetConfig":
        """Inverse of `to_dict`; unknown or missing fields are a ValueError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown hypernet config fields {unknown}; expected only {sorted(known)}")
        d = dict(d)
        try:
            d["targets"] = tuple(Target(str(n), int(i), int(o)) for n, i, o in d["targets"])
            d["encoder"] = EncoderSpec.from_dict(d["encoder"])
            return cls(**d)
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed hypernet config ({e}); expected the fields {sorted(known)}") from e
