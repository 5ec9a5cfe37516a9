"""The resume checkpoint: everything needed to continue a run exactly, as safetensors tensors + JSON (no pickle).

Tensors: `net/…` (raw weights), `ema/…`, `optimizer/<param index>/<key>` (AdamW moments and step counts) and
`rng/…` (RNG states as uint8). Metadata: one JSON document with the step, the config, the optimizer's param groups,
the GradScaler state and the summary. The learning-rate schedule is a function of the step, so it needs no state;
data order, augmentations, noise and timesteps are seeded per sample (data.py), so they need none either.
"""
import json
import random

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from hypernet import write_atomic

FORMAT = "hypersubject-resume"
FORMAT_VERSION = 1
METADATA_KEY = "hypersubject_resume"


def save_resume(path: str, step: int, net: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, config: dict, world: int, summary: dict) -> None:
    """Write the resume checkpoint of the state after `step` optimizer steps."""
    tensors = {f"net/{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema/{k}": v for k, v in ema.state_dict().items()})
    tensors.update({f"optimizer/{k}": v for k, v in optimizer_tensors(optimizer).items()})
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    numpy_state = np.random.get_state()
    document = {"format": FORMAT, "format_version": FORMAT_VERSION, "step": step, "world": world, "config": config,
                "optimizer_param_groups": optimizer.state_dict()["param_groups"], "scaler": scaler.state_dict(),
                "rng_python": random.getstate(), "rng_numpy": [numpy_state[0], numpy_state[1].tolist(),
                                                                *numpy_state[2:]],
                "summary": summary}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomic(path, safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(document)}))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The optimizer's per-parameter state (AdamW moments, step counts) as `<param index>/<name>` tensors."""
    return {f"{index}/{key}": torch.as_tensor(value) for index, entry in optimizer.state_dict()["state"].items()
            for key, value in entry.items()}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], param_groups: list) -> None:
    """Inverse of `optimizer_tensors`, with the param groups kept as JSON."""
    state = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def read_resume(path: str) -> tuple[dict, dict[str, Tensor]]:
    """The JSON document and the tensors of a resume checkpoint (CPU), validated."""
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = safetensors.torch.load_file(path, device="cpu")
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{path} is not a readable resume checkpoint ({e}); start a new run in another out_dir") from e
    document = json.loads(metadata.get(METADATA_KEY, "{}"))
    if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: expected a {FORMAT} v{FORMAT_VERSION} file, found "
                         f"{document.get('format')!r} v{document.get('format_version')!r}")
    return document, tensors


def restore(document: dict, tensors: dict[str, Tensor], net: nn.Module, ema: nn.Module,
            optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> int:
    """Load weights, EMA, optimizer, scaler and RNG states into the given objects; returns the step."""
    net.load_state_dict(_section(tensors, "net/"))
    ema.load_state_dict(_section(tensors, "ema/"))
    load_optimizer(optimizer, _section(tensors, "optimizer/"), document["optimizer_param_groups"])
    if document["scaler"]:
        scaler.load_state_dict(document["scaler"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = _section(tensors, "rng/cuda/")
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([cuda_states[str(i)] for i in range(len(cuda_states))])
    version, internal, gauss = document["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = document["rng_numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return int(document["step"])


def _section(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
