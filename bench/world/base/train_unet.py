"""Train the world's SD1.5-family UNet with the ordinary eps-prediction loss, resumably.

    python -m bench.world.base.train_unet [--max_minutes M] [--resume]

Data: random train subjects (`split_subjects`) in random contexts, rendered with jitter, encoded on the fly by the
trained TAESD exactly as ComfyUI does (VAEEncode, then `process_latent_in` × 0.18215). Captions describe the toy's
identity for a share of the samples ("a red toy with right half blue blue blue blue on a green background, …"; each
training subject in a fixed set of its contexts), give only the class word for the rest ("a toy on a green
background, …"), and are empty for 10 % so CFG works: the base model can draw any toy it is told about, and some toy
when it is not, as a real model knows "a corgi". All captions are encoded once by the frozen random CLIP-L through ComfyUI's own CLIPTextEncode
path and cached.
Noise: ComfyUI's SD15 `ModelSamplingDiscrete` (scaled-linear betas, 1000 steps) and EPS input scaling, taken from
the model object that ComfyUI itself samples with.
"""
import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...tiny_checkpoints import init_fan_in_
from ..contexts import Context, all_contexts, prompt, random_context
from ..render import render_with_coverage
from ..subjects import Subject, describe, split_subjects
from train.losses import subject_cell_weights, weighted_mse
from train.state import load_optimizer, optimizer_tensors

from .build import UNET_PREFIX, WORLD_UNET, read_checkpoint, unprefixed
from .common import CACHE, append_jsonl, import_comfy, load_state, parse_config, save_state, setup_logging

log = logging.getLogger(__name__)
SD15_LATENT_SCALE = 0.18215
EMPTY = len(all_contexts())  # index of the empty prompt in the encoding table; descriptions follow it


@dataclass(frozen=True)
class UNetConfig:
    """Everything that defines a UNet training run; stored in its checkpoint."""

    steps: int = field(default=200_000, metadata={"help": "optimizer steps at most"})
    max_minutes: float = field(default=0.0, metadata={"help": "stop after this many minutes of this run (0: never)"})
    batch: int = field(default=32, metadata={"help": "batch size"})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate (constant after warm-up)"})
    warmup: int = field(default=200, metadata={"help": "linear warm-up steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    ema_decay: float = field(default=0.995, metadata={"help": "EMA decay of the exported weights"})
    caption_dropout: float = field(default=0.1, metadata={"help": "share of empty prompts (for CFG)"})
    describe_share: float = field(default=0.7, metadata={"help": "share of prompts that describe the toy's identity"})
    described_contexts: int = field(default=24, metadata={"help": "contexts per training subject with a description"})
    subject_weight: float = field(default=0.0, metadata={
        "help": "extra loss weight on the latent cells the toy covers (0: plain MSE); the toy is a few of 64 cells"})
    clip_seed: int = field(default=0, metadata={"help": "seed of the frozen random CLIP-L"})
    seed: int = field(default=0, metadata={"help": "init and data seed"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    save_every_s: float = field(default=240.0, metadata={"help": "checkpoint at least this often (seconds)"})
    vae: str = field(default=str(CACHE / "vae_state.safetensors"), metadata={"help": "trained TAESD checkpoint (train_vae)"})
    out: str = field(default=str(CACHE / "unet_state.safetensors"), metadata={"help": "checkpoint path"})
    init_from: str = field(default="", metadata={
        "help": "a built world checkpoint (build.py) whose UNet starts a new run, as model and EMA (fresh optimizer)"})


def new_world_model(seed: int, unet_config: dict = WORLD_UNET):
    """ComfyUI's own SD15 BaseModel (UNet + model_sampling) in fp32, with explicit init.

    ComfyUI's ops skip init; like SD's `zero_module`, the last conv of every res block, every transformer's
    proj_out and the output conv start at zero, so the untrained UNet predicts eps = 0.
    """
    import comfy.supported_models

    model_config = comfy.supported_models.SD15(dict(unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    unet = init_fan_in_(model.diffusion_model, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.startswith("out.2.") or ".out_layers.3." in name or ".proj_out." in name:
                param.zero_()
    return model


def described_contexts(subjects: list[Subject], per_subject: int, seed: int) -> list[tuple[Subject, Context]]:
    """The (subject, context) pairs whose identity descriptions the base model trains on: a fixed set per subject."""
    contexts = all_contexts()
    rng = np.random.default_rng([seed, 1])
    return [(subject, contexts[int(i)]) for subject in subjects
            for i in rng.choice(len(contexts), per_subject, replace=False)]


def caption_texts(described: list[tuple[Subject, Context]]) -> list[str]:
    """Every training caption, in table order: class-level prompts, the empty prompt, then the descriptions."""
    return [prompt(c) for c in all_contexts()] + [""] + [prompt(c, describe(s)) for s, c in described]


def prompt_encodings(texts: list[str], clip_seed: int) -> torch.Tensor:
    """(len(texts), 77, 768): CLIPTextEncode of every text; cached in .cache/world."""
    path = CACHE / f"prompts_v2_clip{clip_seed}.safetensors"
    if path.exists():
        document, cached = load_state(path)
        if document["texts"] == texts:
            return cached["prompts"]["cond"]
    cond = encode_texts(texts, clip_seed)
    save_state(path, {"texts": texts}, {"prompts": {"cond": cond}})
    return cond


def encode_texts(texts: list[str], clip_seed: int) -> torch.Tensor:
    """(len(texts), 77, 768): CLIPTextEncode of every text with the world's random CLIP-L, uncached."""
    import comfy.sd
    import nodes

    from ...tiny_checkpoints import taesd_state_dict, tiny_unet_state_dict
    from .build import with_clip

    # The CLIP object exactly as CheckpointLoaderSimple builds it from a checkpoint with these CLIP-L keys.
    state = with_clip({**tiny_unet_state_dict(0), **taesd_state_dict(0)}, clip_seed)
    clip = comfy.sd.load_state_dict_guess_config(state)[1]
    return torch.cat([nodes.CLIPTextEncode().encode(clip, text)[0][0][0] for text in texts]).float()


def load_taesd(path: Path):
    """The trained, calibrated TAESD, frozen."""
    from comfy.taesd.taesd import TAESD

    vae = TAESD()
    vae.load_state_dict(load_state(path)[1]["model"])
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images → the model-space latents ComfyUI samples in: VAE.encode (input ×2−1) × SD15 scale."""
    return vae.encode(images * 2.0 - 1.0) * SD15_LATENT_SCALE


def diffusion_loss(model, latents: torch.Tensor, context: torch.Tensor, generator: torch.Generator,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Eps-prediction MSE at a uniform integer timestep, with ComfyUI's own noise scaling and input scaling.

    `weights` (batch, 1, h, w), when given, weights each latent cell's squared error (mean-normalized per sample).
    """
    sampling = model.model_sampling
    t = torch.randint(0, len(sampling.sigmas), (len(latents),), generator=generator)
    sigma = sampling.sigmas[t]
    noise = torch.randn(latents.shape, generator=generator)
    noisy = sampling.noise_scaling(sigma, noise, latents)  # x0 + sigma·eps
    eps = model.diffusion_model(sampling.calculate_input(sigma, noisy), sampling.timestep(sigma).float(),
                                context=context)
    return F.mse_loss(eps, noise) if weights is None else weighted_mse(eps, noise, weights)


def train_step(model, optimizer, latents, context, generator, weights=None) -> float:
    """One optimizer step on one batch; returns the loss."""
    loss = diffusion_loss(model, latents, context, generator, weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def training_batch(config: UNetConfig, step: int, subjects: list[Subject], described: list[tuple[Subject, Context]],
                   vae, encodings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, prompt encodings, loss weights per latent cell) for one step, deterministic per step so a resumed
    run sees the same data."""
    rng = np.random.default_rng([config.seed, step])
    images, coverages, index = [], [], []
    for _ in range(config.batch):
        draw = rng.random()
        if draw < config.describe_share:
            k = int(rng.integers(len(described)))
            (subject, context), caption = described[k], EMPTY + 1 + k
        else:
            subject, context = subjects[int(rng.integers(len(subjects)))], random_context(rng)
            caption = EMPTY if draw > 1 - config.caption_dropout else all_contexts().index(context)
        image, coverage = render_with_coverage(subject, context, 64, rng)
        images.append(image)
        coverages.append(coverage)
        index.append(caption)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    latents = encode_latents(vae, batch)
    weights = subject_cell_weights(torch.from_numpy(np.stack(coverages)), latents.shape[-2:], config.subject_weight)
    return latents, encodings[torch.tensor(index)], weights


def built_unet(path: Path) -> dict[str, torch.Tensor]:
    """The UNet weights of a built world checkpoint, in fp32."""
    return unprefixed(read_checkpoint(path)[0], UNET_PREFIX)


@torch.no_grad()
def update_ema(ema, model, decay: float, step: int) -> None:
    """Exponential moving average, with the usual (1+n)/(10+n) warm-up of the decay."""
    decay = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)


def main(argv=None) -> None:
    config, resume = parse_config(UNetConfig, argv, __doc__)
    out = Path(config.out)
    setup_logging(out.with_suffix(".log"))
    torch.set_num_threads(config.threads)
    import_comfy()
    subjects, _ = split_subjects()
    described = described_contexts(subjects, config.described_contexts, config.seed)
    encodings = prompt_encodings(caption_texts(described), config.clip_seed)
    vae = load_taesd(Path(config.vae))

    model = new_world_model(config.seed)
    unet = model.diffusion_model
    ema = copy.deepcopy(unet).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    if resume and out.exists():
        document, state = load_state(out)
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        load_optimizer(optimizer, state["optimizer"], document["optimizer_param_groups"])
        start = document["step"]
        log.info("resumed from %s at step %d", out, start)
    elif config.init_from:
        weights = built_unet(Path(config.init_from))
        unet.load_state_dict(weights)
        ema.load_state_dict(weights)
        log.info("started from the UNet of %s", config.init_from)

    curve, t0, last_save, losses = out.with_suffix(".jsonl"), time.time(), time.time(), []
    for step in range(start, config.steps):
        latents, context, weights = training_batch(config, step, subjects, described, vae, encodings)
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup)
        losses.append(train_step(model, optimizer, latents, context, torch.Generator().manual_seed(step), weights))
        update_ema(ema, unet, config.ema_decay, step)
        if (step + 1) % 20 == 0:
            rate = (step + 1 - start) * config.batch / (time.time() - t0)
            append_jsonl(curve, {"step": step + 1, "loss": float(np.mean(losses)), "samples_per_s": rate})
            log.info("step %d loss %.4f (%.1f samples/s)", step + 1, np.mean(losses), rate)
            losses = []
        done = step == config.steps - 1 or (config.max_minutes and time.time() - t0 > 60 * config.max_minutes)
        if done or time.time() - last_save > config.save_every_s:
            save_state(out, {"config": dataclasses.asdict(config), "step": step + 1,
                             "optimizer_param_groups": optimizer.state_dict()["param_groups"]},
                       {"model": unet.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer_tensors(optimizer)})
            log.info("saved %s at step %d", out, step + 1)
            last_save = time.time()
        if done:
            break


if __name__ == "__main__":
    main()
