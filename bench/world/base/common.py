"""Shared plumbing for the base-model scripts: paths, ComfyUI import, CLI from a config dataclass, data, checkpoints."""
import argparse
import json
import logging
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch

from hypernet import write_atomic

from ..contexts import Context, random_context
from ..render import render
from ..subjects import Subject

REPO = Path(__file__).resolve().parents[3]
CACHE = REPO / ".cache" / "world"
STATE_KEY = "world_training_state"


def import_comfy() -> None:
    """Make `comfy` importable in-process (CPU), as the trainer and the tests do."""
    from train.base_model import import_comfy as import_comfy_runtime

    import_comfy_runtime(cpu=True)


def parse_config(config_cls, argv=None, description: str = ""):
    """The trainer's CLI generator for a config dataclass (`--<field> value`), plus --resume."""
    from train.config import add_config_options

    parser = argparse.ArgumentParser(description=description)
    add_config_options(parser, config_cls)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out if present")
    args = vars(parser.parse_args(argv))
    resume = args.pop("resume")
    return config_cls(**args), resume


def setup_logging(log_path: Path | None = None) -> None:
    """Log to stderr and, when given, to a file next to the checkpoint."""
    handlers = [logging.StreamHandler()]
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", handlers=handlers, force=True)


def save_state(path: Path, document: dict, sections: dict[str, dict[str, torch.Tensor]]) -> None:
    """A training state as one safetensors file (never pickle), written atomically: tensors `<section>/<name>`,
    `document` (config, step, metrics, optimizer param groups) as JSON metadata."""
    tensors = {f"{section}/{name}": value.detach().cpu().clone(memory_format=torch.contiguous_format)
               for section, part in sections.items() for name, value in part.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, safetensors.torch.save(tensors, metadata={STATE_KEY: json.dumps(document)}))


def load_state(path: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """Inverse of `save_state`: (document, {section: {name: tensor}})."""
    with safetensors.safe_open(str(path), framework="pt") as file:
        document = json.loads((file.metadata() or {}).get(STATE_KEY, "null"))
    if document is None:
        raise ValueError(f"{path} is not a training state written by save_state (no {STATE_KEY!r} metadata)")
    sections = {}
    for key, value in safetensors.torch.load_file(str(path)).items():
        section, name = key.split("/", 1)
        sections.setdefault(section, {})[name] = value
    return document, sections


def append_jsonl(path: Path, record: dict) -> None:
    """One JSON line per logged step: the loss curve survives restarts."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def render_batch(subjects: list[Subject], n: int, rng: np.random.Generator, size: int = 64,
                 jitter: bool = True) -> tuple[torch.Tensor, list[Context]]:
    """n renders of random subjects in random contexts: (n, 3, size, size) in [0, 1], and their contexts."""
    images, contexts = [], []
    for _ in range(n):
        subject = subjects[int(rng.integers(len(subjects)))]
        context = random_context(rng)
        images.append(render(subject, context, size, rng if jitter else None))
        contexts.append(context)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), contexts


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1], over the whole batch."""
    mse = torch.mean((a.clamp(0, 1) - b) ** 2).item()
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))
