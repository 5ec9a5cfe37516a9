"""Load Subject Hypernet, Encode Subject and Predict LoRA: one image of a subject → a LoRA in one forward pass."""
import hashlib
import logging
import os

import comfy.model_management
import comfy.utils
import torch
from comfy_api.latest import io

from ..hypernet import COMBINE_MODES, combine_references, load, resize_center_crop, to_rgb
from .image_checks import POLICIES, usable_indices
from .model_folder import hypernet_files, hypernet_path
from .types import CATEGORY, Embeds, HyperSubjectNet, LoadedNet, Lora, SubjectEmbeds, SubjectLoRA

log = logging.getLogger(__name__)

_CACHE: dict[tuple, LoadedNet] = {}  # (path, mtime_ns, size) → net; module level because node classes hold no state
_CACHE_SIZE = 4
CLIP_PREVIEW_SIZE = 224


def file_key(path: str) -> tuple:
    stat = os.stat(path)
    return path, stat.st_mtime_ns, stat.st_size


class LoadSubjectHypernet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HyperSubjectLoader",
            display_name="Load Subject Hypernet",
            category=CATEGORY,
            description="Loads a HyperSubject hypernetwork from models/hypersubject/. Its architecture, base model "
                        "family and encoder are read from the file.",
            inputs=[io.Combo.Input("hypernet_name", options=hypernet_files(),
                                   tooltip="A HyperSubject .safetensors file in models/hypersubject/.")],
            outputs=[HyperSubjectNet.Output(display_name="hypernet")],
        )

    @classmethod
    def fingerprint_inputs(cls, hypernet_name: str) -> tuple:
        return file_key(hypernet_path(hypernet_name))[1:]

    @classmethod
    def execute(cls, hypernet_name: str) -> io.NodeOutput:
        key = file_key(hypernet_path(hypernet_name))
        if key not in _CACHE:
            net, metadata = load(key[0])
            _CACHE[key] = LoadedNet(net.eval().requires_grad_(False), hypernet_name, metadata)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
        return io.NodeOutput(_CACHE[key])


class EncodeSubject(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HyperSubjectEncode",
            display_name="Encode Subject",
            category=CATEGORY,
            description="Encodes one or more reference images of ONE subject into subject embeddings.",
            inputs=[
                HyperSubjectNet.Input("hypernet", tooltip="From Load Subject Hypernet."),
                io.Image.Input("image", tooltip="One or more pictures of the same subject; any size, RGB, RGBA "
                                                "or grayscale. Transparent areas count as background."),
                io.Combo.Input("combine", options=list(COMBINE_MODES), default="mean",
                               tooltip="How several reference images combine: 'mean' averages their tokens; "
                                       "'concat' lets the hypernet attend to all of them."),
                io.Combo.Input("on_bad_input", options=list(POLICIES), default="skip",
                               tooltip="What an unusable image (tiny, flat colour, NaN) does: 'error' stops the "
                                       "run; 'skip' drops it (no usable image → no personalization, the base model "
                                       "passes through); 'pass_through' encodes it anyway."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Needed only by hypernets that read CLIP vision features; the error "
                                            "message names the size the hypernet expects."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional subject mask (1 = subject); the rest becomes neutral grey."),
            ],
            outputs=[SubjectEmbeds.Output(display_name="subject"),
                     io.Image.Output(display_name="encoder_view", tooltip="What the encoder saw.")],
        )

    @classmethod
    def execute(cls, hypernet: LoadedNet, image, combine: str, on_bad_input: str, clip_vision=None,
                mask=None) -> io.NodeOutput:
        keep, notes = usable_indices(image, on_bad_input)
        for note in notes:
            log.warning("Encode Subject (on_bad_input=%s): %s", on_bad_input, note)
        images = image[keep]
        source_hash = hashlib.sha256(images.cpu().float().numpy().tobytes()).hexdigest()[:16]
        if not keep:
            return io.NodeOutput(Embeds(None, hypernet.name, source_hash, 0), torch.zeros(1, 8, 8, 3))
        if mask is not None and mask.ndim == 3 and mask.shape[0] == len(image):
            mask = mask[keep]
        rgb = to_rgb(torch.nan_to_num(images.float()), mask)
        tokens, preview = encode(hypernet, rgb, clip_vision)
        subject = combine_references(tokens, combine)
        return io.NodeOutput(Embeds(subject, hypernet.name, source_hash, len(keep)), preview)


def encode(hypernet: LoadedNet, rgb: torch.Tensor, clip_vision) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [M, N, D] from the net's own encoder or from CLIP vision, and the images as the encoder saw them."""
    spec = hypernet.net.config.encoder
    if spec.kind == "embedded":
        encoder = hypernet.net.encoder
        return encoder(rgb), encoder.preprocess(rgb)
    if clip_vision is None:
        raise ValueError(f"the hypernet '{hypernet.name}' reads CLIP vision {spec.clip_vision_size} features "
                         f"({spec.token_dim}-d) but no CLIP_VISION is connected: add a Load CLIP Vision node with a "
                         f"{spec.clip_vision_size} model and connect it to 'clip_vision'")
    tokens = clip_vision.encode_image(rgb).penultimate_hidden_states
    if tokens.shape[-1] != spec.token_dim:
        raise ValueError(f"the hypernet '{hypernet.name}' expects CLIP vision {spec.clip_vision_size} "
                         f"({spec.token_dim}-d features) but the connected CLIP_VISION gives {tokens.shape[-1]}-d "
                         f"features: load a {spec.clip_vision_size} model instead")
    return tokens.float().cpu(), resize_center_crop(rgb, CLIP_PREVIEW_SIZE)


class PredictLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HyperSubjectPredictLoRA",
            display_name="Predict LoRA",
            category=CATEGORY,
            description="Predicts the subject's LoRA weights in one forward pass of the hypernetwork.",
            inputs=[HyperSubjectNet.Input("hypernet", tooltip="From Load Subject Hypernet."),
                    SubjectEmbeds.Input("subject", tooltip="From Encode Subject, made with the same hypernet.")],
            outputs=[SubjectLoRA.Output(display_name="subject_lora")],
        )

    @classmethod
    def execute(cls, hypernet: LoadedNet, subject: Embeds) -> io.NodeOutput:
        if subject.net_name != hypernet.name:
            raise ValueError(f"the subject was encoded with the hypernet '{subject.net_name}' but this is "
                             f"'{hypernet.name}': connect the same Load Subject Hypernet to both nodes")
        if subject.tokens is None:
            log.warning("Predict LoRA: no usable subject image; the LoRA is empty and changes nothing")
            return io.NodeOutput(Lora(None, hypernet.name, subject.source_hash))
        progress = comfy.utils.ProgressBar(1)
        comfy.model_management.throw_exception_if_processing_interrupted()
        lora = hypernet.net(subject.tokens)
        progress.update(1)
        return io.NodeOutput(Lora(lora, hypernet.name, subject.source_hash))


NODES = [LoadSubjectHypernet, EncodeSubject, PredictLoRA]
