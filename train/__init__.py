"""HyperSubject's standalone hypernetwork trainer: `python -m train --config FILE.toml [--key value …]`."""
from .config import TrainConfig
from .trainer import train

__all__ = ["TrainConfig", "train"]
