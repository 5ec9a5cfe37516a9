"""Captions encoded once and stored as safetensors, so that training never runs the text encoder.

A caption's encoding never changes, and Flux's T5-XXL (4.7B parameters) cannot sit beside training on most
machines. `python -m train.text_cache --config my.toml --text_encoder clip_l.safetensors --text_encoder
t5xxl_fp16.safetensors --type flux` encodes every caption of the config's data folder, and the empty caption the
sample grids use as the unconditional, with ComfyUI's own text encoder (as DualCLIPLoader + CLIPTextEncode would)
into the config's `text_cache` file; the trainer then reads the encodings from there.
"""
import json
import logging
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from hypernet import write_atomic

from .base_model import import_comfy
from .config import TrainConfig, build_parser, config_from_args
from .data import scan_subjects

log = logging.getLogger(__name__)

FORMAT = "hypersubject.text_cache.v1"


def encode(clip, captions: list[str]) -> dict[str, tuple[Tensor, Tensor]]:
    """caption → (context 1×L×D, pooled 1×P) in float32 on the CPU, through a ComfyUI CLIP object; every context
    of one length, since a training batch stacks them."""
    encoded = {}
    for caption in dict.fromkeys(captions):
        context, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
        encoded[caption] = (context.float().cpu(), pooled.float().cpu())
    lengths = {caption: context.shape[1] for caption, (context, _) in encoded.items()}
    if len(set(lengths.values())) > 1:
        shortest = min(lengths.values())
        longer = [f"{caption!r} ({n} tokens)" for caption, n in lengths.items() if n > shortest][:3]
        raise ValueError(f"captions encode to contexts of different lengths ({shortest} tokens for most; {longer}): "
                         f"a training batch stacks them, so shorten those captions")
    return encoded


def write(path: Path, encoded: dict[str, tuple[Tensor, Tensor]], source: str) -> Path:
    """The encodings as one safetensors file: contexts and pooled texts in float16, captions in the metadata."""
    captions = list(encoded)
    tensors = {f"{kind}.{i}": encoded[caption][j].half().contiguous()
               for i, caption in enumerate(captions) for j, kind in enumerate(("context", "pooled"))}
    metadata = {"format": FORMAT, "captions": json.dumps(captions), "text_encoder": source}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, safetensors.torch.save(tensors, metadata=metadata))
    return path


def read(path: str) -> dict[str, tuple[Tensor, Tensor]]:
    """caption → (context, pooled) in float32, from a file `write` made."""
    if not Path(path).is_file():
        raise ValueError(f"text_cache {path!r} is not a file: make it with python -m train.text_cache (README)")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise ValueError(f"{path} is not a HyperSubject text cache (format {metadata.get('format')!r}, "
                                 f"expected {FORMAT!r}): make it with python -m train.text_cache")
            captions = json.loads(metadata["captions"])
            return {caption: (f.get_tensor(f"context.{i}").float(), f.get_tensor(f"pooled.{i}").float())
                    for i, caption in enumerate(captions)}
    except safetensors.SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}): make it again with "
                         f"python -m train.text_cache") from e


def captions_of(cfg: TrainConfig) -> list[str]:
    """Every caption a run on this config reads: those of all subjects (held-out ones too), and the empty one."""
    subjects, _ = scan_subjects(cfg.data_dir, cfg.class_word, cfg.on_bad_image, report=False)
    return ["", *(caption for subject in subjects for caption in subject.captions)]


def make_text_cache(cfg: TrainConfig, text_encoders: list[str], clip_type: str) -> Path:
    """Encode every caption of `cfg` with the text encoder files into cfg.text_cache."""
    if not cfg.text_cache:
        raise ValueError("the config sets no text_cache: say where the encodings go")
    import_comfy(cpu=not torch.cuda.is_available())
    import comfy.sd

    kind = getattr(comfy.sd.CLIPType, clip_type.upper(), None)
    if kind is None:
        raise ValueError(f"unknown text encoder type {clip_type!r}; ComfyUI knows "
                         f"{[t.name.lower() for t in comfy.sd.CLIPType]}")
    clip = comfy.sd.load_clip(ckpt_paths=text_encoders, clip_type=kind, model_options={"dtype": torch.float32})
    with torch.no_grad():
        encoded = encode(clip, captions_of(cfg))
    path = write(Path(cfg.text_cache), encoded, json.dumps({"files": text_encoders, "type": clip_type}))
    log.info("encoded %d distinct captions into %s", len(encoded), path)
    return path


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser(prog="python -m train.text_cache", description=__doc__)
    group = parser.add_argument_group("text encoder")
    group.add_argument("--text_encoder", action="append", required=True,
                       help="a text encoder file, as CLIPLoader and DualCLIPLoader take them (repeat for two)")
    group.add_argument("--type", default="flux", help="ComfyUI's CLIP type, as in DualCLIPLoader (flux, sdxl, "
                                                      "stable_diffusion, …)")
    args = vars(parser.parse_args(argv))
    text_encoders, clip_type = args.pop("text_encoder"), args.pop("type")
    config, _ = config_from_args(args)
    try:
        make_text_cache(config, text_encoders, clip_type)
    except ValueError as e:
        log.error("%s", e)
        raise SystemExit(1) from e


if __name__ == "__main__":
    main()
