"""Tiny test files cached per machine under .cache/ (rebuilt when the builder's version changes)."""
from collections.abc import Callable
from pathlib import Path

from bench.harness.comfy_runtime import REPO, import_comfy

CACHE = REPO / ".cache" / "checkpoints"


def tiny_checkpoints() -> dict[str, Path]:
    """The SD1.5-family tiny checkpoints, without and with a CLIP-L text encoder."""
    import_comfy()
    from bench import tiny_checkpoints as build

    return built({
        "sd15_tiny.safetensors": lambda p: build.write_sd15_checkpoint(p, seed=0, with_clip=False),
        "sd15_tiny_clip.safetensors": lambda p: build.write_sd15_checkpoint(p, seed=0, with_clip=True),
    })


def tiny_clip_vision() -> Path:
    """A random CLIP-vision ViT-L/14 (608 MB; about 8 s to build)."""
    import_comfy()
    from bench import tiny_checkpoints as build

    path = CACHE / f"v{build.BUILDER_VERSION}" / "clip_vision_vit_l.safetensors"
    return path if path.exists() else build.write_clip_vision_vit_l(path, seed=0)


def tiny_flux() -> dict[str, Path]:
    """A Flux.1-dev diffusion model of one double and one single block (1.07 GB; about 45 s to build), a 16-channel
    VAE and a CLIP-L text encoder for it: "model", "vae" and "clip_l" → paths."""
    import_comfy()
    from bench import tiny_checkpoints as build

    paths = built({"flux_tiny.safetensors": lambda p: build.write_flux_model(p, seed=0),
                   "flux_tiny_vae.safetensors": lambda p: build.write_flux_vae(p, seed=0),
                   "clip_l_tiny.safetensors": lambda p: build.write_clip_l(p, seed=0)})
    return dict(zip(("model", "vae", "clip_l"), paths.values()))


def built(writers: dict[str, Callable[[Path], object]]) -> dict[str, Path]:
    """File name → its path in this builder version's cache folder, written by its writer first where missing."""
    from bench import tiny_checkpoints as build

    folder = CACHE / f"v{build.BUILDER_VERSION}"
    for name, write in writers.items():
        if not (folder / name).exists():
            write(folder / name)
    return {name: folder / name for name in writers}
