"""Teacher LoRA files: where each training subject's teacher lies, and reading them for the weight-space loss.

A teacher is a standard kohya LoRA file (any trainer's, or python -m train.teachers's) for exactly the hypernet's
targets; `<teacher_dir>/<subject id>.safetensors`.
"""
import json
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from hypernet import PredictedLoRA, Target, kohya_stem

from .data import Subject

METADATA_KEY = "hypersubject_teacher"  # the settings python -m train.teachers made a teacher with


def teacher_path(teacher_dir: str, subject_id: str) -> Path:
    """Where the teacher of a subject lies."""
    return Path(teacher_dir) / f"{subject_id}.safetensors"


def check_settings(path: Path, settings: dict) -> None:
    """A teacher already on disk must have been made with `settings`; else a ValueError saying what differs."""
    found = json.loads(read_metadata(path).get(METADATA_KEY, "null"))
    if found != settings:
        differ = "not made by python -m train.teachers" if not isinstance(found, dict) else ", ".join(
            f"{k}: file {found.get(k)!r}, now {settings.get(k)!r}" for k in {**settings, **found}
            if found.get(k) != settings.get(k))
        raise ValueError(f"{path} exists but was made with other settings ({differ}); move it away or choose "
                         f"another teacher_dir (teachers are never overwritten)")


def average_teachers(paths: list[Path]) -> dict[str, torch.Tensor]:
    """One kohya LoRA whose ΔW is the mean of the files' ΔW (LoRAs of the same layers): their factors side by side,
    each down with its alpha / rank folded in, the ups divided by their number; rank = the sum of the ranks."""
    states = [safetensors.torch.load_file(str(path), device="cpu") for path in paths]
    stems = sorted({key.split(".", 1)[0] for key in states[0]})
    averaged = {}
    for stem in stems:
        downs, ups = zip(*(scaled_factors(state, stem) for state in states))
        averaged[f"{stem}.lora_down.weight"] = torch.cat(downs, 0)
        averaged[f"{stem}.lora_up.weight"] = torch.cat(ups, 1) / len(states)
        averaged[f"{stem}.alpha"] = torch.tensor(float(sum(d.shape[0] for d in downs)))
    return averaged


def read_metadata(path: Path) -> dict:
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path} is not a readable .safetensors LoRA ({e}); replace it") from e


def load_teachers(teacher_dir: str, subjects: list[Subject], targets: tuple[Target, ...],
                  family: str) -> PredictedLoRA:
    """The teachers of `subjects` as one PredictedLoRA (subject k = row k; scale folded into down, so alpha = rank)."""
    loaded = [read_teacher(teacher_path(teacher_dir, s.id), targets) for s in subjects]
    ranks = {next(iter(down.values())).shape[0] for down, _ in loaded}
    if len(ranks) > 1:
        raise ValueError(f"the teachers in {teacher_dir} differ in rank ({sorted(ranks)}); make them all with one "
                         f"rank")
    (rank,) = ranks
    down = {t.name: torch.stack([d[t.name] for d, _ in loaded]) for t in targets}
    up = {t.name: torch.stack([u[t.name] for _, u in loaded]) for t in targets}
    return PredictedLoRA(list(targets), down, up, rank=rank, alpha=float(rank), family=family)


def read_teacher(path: Path, targets: tuple[Target, ...]) -> tuple[dict, dict]:
    """down (alpha/rank folded in) and up factors of a kohya LoRA file for exactly the hypernet's `targets`."""
    if not path.is_file():
        raise ValueError(f"no teacher LoRA {path} for subject {path.stem!r}: make the teachers with python -m "
                         f"train.teachers --config <this config>, or set teacher_weight = 0")
    read_metadata(path)
    tensors = safetensors.torch.load_file(str(path), device="cpu")
    stems = {kohya_stem(t.name): t for t in targets}
    unknown = sorted(k for k in tensors if k.split(".", 1)[0] not in stems)
    if unknown:
        raise ValueError(f"teacher {path} has weights for layers the hypernet does not predict, e.g. {unknown[0]!r} "
                         f"({len(unknown)} keys); a teacher must be a LoRA of the hypernet's {len(targets)} attention "
                         f"targets only")
    down, up = {}, {}
    for stem, target in stems.items():
        missing = [k for k in (f"{stem}.lora_down.weight", f"{stem}.lora_up.weight") if k not in tensors]
        if missing:
            raise ValueError(f"teacher {path} lacks {missing[0]!r}: a teacher must hold a LoRA for every one of the "
                             f"hypernet's {len(targets)} targets")
        d, u = scaled_factors(tensors, stem)
        expected = ((d.shape[0], target.in_features), (target.out_features, d.shape[0]))
        if (tuple(d.shape), tuple(u.shape)) != expected:
            raise ValueError(f"teacher {path}: {stem} has down {tuple(d.shape)} and up {tuple(u.shape)}, expected "
                             f"{expected[0]} and {expected[1]} for {target.name} (a LoRA for another base model?)")
        down[target.name], up[target.name] = d, u
    if all(float((up[n] @ down[n]).abs().max()) == 0 for n in down):
        raise ValueError(f"teacher {path} is an empty LoRA (every ΔW is zero); make it again")
    return down, up


def scaled_factors(tensors: dict[str, torch.Tensor], stem: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(down with alpha / rank folded in, up) of one layer of a kohya LoRA state dict, in float32 (no alpha: rank)."""
    d, u = tensors[f"{stem}.lora_down.weight"].float(), tensors[f"{stem}.lora_up.weight"].float()
    alpha = float(tensors[f"{stem}.alpha"]) if f"{stem}.alpha" in tensors else float(d.shape[0])
    return d * (alpha / d.shape[0]), u
