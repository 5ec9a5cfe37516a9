"""Tiny test files cached per machine under .cache/ (rebuilt when the builder's version changes)."""
from pathlib import Path

from bench.harness.comfy_runtime import REPO, import_comfy

CACHE = REPO / ".cache" / "checkpoints"


def tiny_checkpoints() -> dict[str, Path]:
    """The SD1.5-family tiny checkpoints, without and with a CLIP-L text encoder."""
    import_comfy()
    from bench import tiny_checkpoints as build

    folder = CACHE / f"v{build.BUILDER_VERSION}"
    wanted = {
        "sd15_tiny.safetensors": lambda p: build.write_sd15_checkpoint(p, seed=0, with_clip=False),
        "sd15_tiny_clip.safetensors": lambda p: build.write_sd15_checkpoint(p, seed=0, with_clip=True),
    }
    for name, write in wanted.items():
        if not (folder / name).exists():
            write(folder / name)
    return {name: folder / name for name in wanted}


def tiny_clip_vision() -> Path:
    """A random CLIP-vision ViT-L/14 (608 MB; about 8 s to build)."""
    import_comfy()
    from bench import tiny_checkpoints as build

    path = CACHE / f"v{build.BUILDER_VERSION}" / "clip_vision_vit_l.safetensors"
    return path if path.exists() else build.write_clip_vision_vit_l(path, seed=0)


def tiny_flux() -> dict[str, Path]:
    """A Flux.1-dev diffusion model of one double and one single block (1.07 GB; about 30 s to build) and a
    16-channel VAE and a CLIP-L text encoder for it: "model", "vae" and "clip_l" → paths."""
    import_comfy()
    from bench import tiny_checkpoints as build

    folder = CACHE / f"v{build.BUILDER_VERSION}"
    wanted = {"model": ("flux_tiny.safetensors", build.write_flux_model),
              "vae": ("flux_tiny_vae.safetensors", build.write_flux_vae),
              "clip_l": ("clip_l_tiny.safetensors", build.write_clip_l)}
    for name, write in wanted.values():
        if not (folder / name).exists():
            write(folder / name, seed=0)
    return {kind: folder / name for kind, (name, _) in wanted.items()}
