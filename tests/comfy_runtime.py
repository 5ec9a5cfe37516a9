"""Locate ComfyUI and import it in-process on the CPU, the way `main.py --cpu` would."""
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def comfyui_root() -> Path:
    """ComfyUI checkout: $HYPERSUBJECT_COMFYUI, else the project-local copy made by `make env`."""
    root = Path(os.environ.get("HYPERSUBJECT_COMFYUI", REPO / ".comfyui"))
    if not (root / "comfy").is_dir():
        raise RuntimeError(f"no ComfyUI at {root}: run `make env` or set HYPERSUBJECT_COMFYUI to a ComfyUI checkout")
    return root


def import_comfy() -> Path:
    """Make `comfy`, `nodes`, `folder_paths` importable with `--cpu`; return the ComfyUI root."""
    root = comfyui_root()
    if "comfy.cli_args" not in sys.modules:
        own_argv, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
        sys.path.insert(0, str(root))
        import comfy.options

        comfy.options.enable_args_parsing()
        import comfy.cli_args  # noqa: F401  parses --cpu before model_management looks for CUDA
        sys.argv = own_argv
    return root
