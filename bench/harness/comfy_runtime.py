"""Locate ComfyUI and import it in-process on the CPU, the way `main.py --cpu` would (the trainer's own import)."""
from pathlib import Path

from train.base_model import REPO, comfyui_root
from train.base_model import import_comfy as import_comfy_runtime

__all__ = ["REPO", "comfyui_root", "import_comfy"]


def import_comfy() -> Path:
    """Make `comfy`, `nodes`, `folder_paths` importable with `--cpu`; return the ComfyUI root."""
    import_comfy_runtime(cpu=True)
    return comfyui_root()
