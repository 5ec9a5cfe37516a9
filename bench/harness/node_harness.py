"""Helpers for calling this pack's nodes in-process, as ComfyUI's executor would."""
import asyncio
import contextlib
from pathlib import Path

import torch

from bench.harness.comfy_runtime import REPO

NODE_IDS = ("HyperSubjectLoader", "HyperSubjectEncode", "HyperSubjectPredictLoRA", "HyperSubjectApplyLoRA",
            "HyperSubjectSaveLoRA", "HMCFGKSampler", "HMCFGGuider")


def load_pack(custom_nodes: Path) -> dict:
    """Link the repo in as custom_nodes/HyperSubject and load it with `nodes.load_custom_node`."""
    import nodes

    link = custom_nodes / "HyperSubject"
    link.symlink_to(REPO, target_is_directory=True)
    assert asyncio.run(nodes.load_custom_node(str(link))), "ComfyUI could not load the pack"
    return {node_id: nodes.NODE_CLASS_MAPPINGS[node_id] for node_id in NODE_IDS}


@contextlib.contextmanager
def model_folder(kind: str, folder: Path):
    """`folder` as the only models/<kind>/ folder while inside: what nodes save lands there, not in ComfyUI's own."""
    import folder_paths

    original = folder_paths.folder_names_and_paths[kind]
    folder_paths.folder_names_and_paths[kind] = ([str(folder)], original[1])
    try:
        yield Path(folder)
    finally:
        folder_paths.folder_names_and_paths[kind] = original


def run(node_class, **inputs) -> tuple:
    """Execute a V3 node under inference mode, like ComfyUI does; its outputs as a tuple."""
    with torch.inference_mode():
        return node_class.execute(**inputs).args


def conditioning(clip, text: str):
    import nodes

    with torch.inference_mode():
        return nodes.CLIPTextEncode().encode(clip, text)[0]


def subject_image(seed: int = 0, size: int = 64, channels: int = 3) -> torch.Tensor:
    """A smooth random picture B×H×W×C in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, channels, 4, 4, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear").movedim(1, -1)


def predicted_lora(pack, hypernet_name: str = "tiny.safetensors", image=None):
    """Load → Encode → Predict with the node classes; the SUBJECT_LORA value."""
    (net,) = run(pack["HyperSubjectLoader"], hypernet_name=hypernet_name)
    embeds, _ = run(pack["HyperSubjectEncode"], hypernet=net, image=subject_image() if image is None else image,
                    combine="mean", on_bad_input="error")
    return run(pack["HyperSubjectPredictLoRA"], hypernet=net, subject=embeds)[0]


def one_step_denoised(guider, sigma: float, shape=(1, 4, 8, 8), seed: int = 0) -> torch.Tensor:
    """The guider's denoised prediction at one sigma for a fixed noisy latent (a one-evaluation sampler)."""
    import comfy.samplers

    def evaluate_once(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return model(x, sigmas[0] * x.new_ones(x.shape[0]), **(extra_args or {}))

    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.tensor([sigma, 0.0])
    with torch.inference_mode():
        return guider.sample(noise, torch.zeros(shape), comfy.samplers.KSAMPLER(evaluate_once), sigmas, seed=seed)
