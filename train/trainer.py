"""The trainer, top to bottom: config → data → frozen base → hypernet → AdamW → loop → checkpoints.

Objective (the paper's): the ordinary denoising loss of the base UNet adapted by the LoRA that the hypernet predicts
from a *reference* image of the subject, on a *target* image of the same subject, plus reg_lambda × the L2 norm of
the predicted weights. Row i of a batch carries subject i's LoRA (PerSampleLoRA), so a batch trains on many subjects.
Optionally (HyperDreamBooth's recipe) teacher_weight × the predicted LoRA's relative distance to a LoRA fine-tuned on
the subject beforehand (train/teachers.py): a direct target for the weights, where the denoising loss carries the
subject only in a small part of its value; with denoising_weight 0 the UNet is not run at all.
"""
import collections
import contextlib
import json
import logging
import math
import statistics
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import hypernet
from hypernet import (CLIP_VISION_TOKEN_DIMS, EncoderSpec, HyperNet, HyperNetConfig, PerSampleLoRA, PredictedLoRA,
                      count_parameters, family_targets, relative_distance, weight_l2)

from . import distributed
from .base_model import FrozenBase, FrozenClipVision, import_comfy, unet_dtype
from .config import FIELD_DEFAULTS, RESUMABLE_CHANGES, TrainConfig, parse_cli
from .data import PairDataset, StepBatches, centre_square, load_rgb, make_loader, scan_subjects, split_held_out
from .ema import EMA
from .losses import denoising_loss
from .preview import sample_grid, save_grid
from .state import read_resume, restore, save_resume
from .teacher_files import load_teachers

log = logging.getLogger(__name__)

HYPERNET_FILE = "hypernet.safetensors"
RESUME_FILE = "resume.safetensors"
LOG_FILE = "log.jsonl"
MIN_LR_RATIO = 0.1  # the cosine schedule ends at lr / 10
# what DivergenceGuard compares, where a run has it
WATCHED = {"mse": "the denoising loss", "reg": "the weight L2 (regularizer)", "teacher": "the teacher loss"}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or jumped far above its running median; nothing of that step was saved."""


def main(argv: list[str] | None = None) -> None:
    """`python -m train --config FILE.toml [--key value …]`, also under torchrun."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config, source = parse_cli(argv)
    try:
        train(config, source)
    except (ValueError, TrainingDiverged) as e:  # bad config, data or checkpoint; divergence: the message says why
        log.error("%s", e)
        raise SystemExit(1) from e


def train(cfg: TrainConfig, source: str = "the in-process config", base: FrozenBase | None = None) -> dict:
    """Run (or, with cfg.resume, continue) a training run; returns the last log record. `base`: reuse a loaded base."""
    proc = distributed.setup()
    try:
        return _train(cfg, source, proc, base)
    finally:
        distributed.cleanup()


def _train(cfg: TrainConfig, source: str, proc: distributed.Process, base: FrozenBase | None) -> dict:
    out_dir = Path(cfg.out_dir)
    resumed = open_run(cfg, out_dir, proc)

    # data
    subjects, skipped = scan_subjects(cfg.data_dir, cfg.class_word, cfg.on_bad_image, report=proc.is_main)
    train_subjects, held_out = split_held_out(subjects, cfg.held_out)
    dataset = PairDataset(train_subjects, cfg.image_size, cfg.flip, cfg.crop == "random",
                          masks=cfg.subject_loss_weight > 0)

    # frozen base model, the hypernet, its EMA, the optimizer
    import_comfy(cpu=proc.device.type == "cpu")
    dtype = unet_dtype(cfg.amp)
    base = base or FrozenBase.load(cfg.base_checkpoint, proc.device, dtype, cfg.base_vae, cfg.text_cache)
    if cfg.grad_checkpointing:
        base.enable_grad_checkpointing()
    clip_vision = FrozenClipVision(cfg.clip_vision) if cfg.encoder == "clip_vision" else None
    net = build_hypernet(cfg, base, clip_vision)
    if cfg.init_from and not resumed:
        start_from(net, cfg.init_from)
    net = net.to(proc.device)
    teachers = None
    if cfg.teacher_weight > 0:
        teachers = load_teachers(cfg.teacher_dir, train_subjects, net.config.targets, net.config.family).to(proc.device)
    ema = EMA(net, cfg.ema_decay)
    optimizer = make_optimizer(net, cfg)
    scaler = torch.amp.GradScaler(proc.device.type, enabled=cfg.amp == "fp16")
    step = restore(*resumed, net, ema.net, optimizer, scaler) if resumed else 0
    personalizer = SubjectToLoRA(net)
    device_ids = [proc.device.index] if proc.device.type == "cuda" else None
    model = DistributedDataParallel(personalizer, device_ids) if proc.world > 1 else personalizer

    # the loop
    end = min(cfg.max_steps, cfg.stop_at or cfg.max_steps)
    batches = iter(make_loader(dataset, StepBatches(len(dataset), cfg.batch_size, cfg.grad_accum, proc.rank,
                                                    proc.world, cfg.seed, step, end), cfg.num_workers))
    global_batch = cfg.batch_size * proc.world * cfg.grad_accum
    log_start(cfg, net, proc, len(dataset), global_batch, step)
    run_log = RunLog(out_dir / LOG_FILE, proc.is_main, keep_until=step)
    previews = held_out_references(held_out, cfg.image_size) if proc.is_main and cfg.sample_every else None
    record = dict(resumed[0]["summary"]) if resumed else {"step": step}
    guard = DivergenceGuard(cfg.divergence_factor, cfg.divergence_window, record.pop("recent", {}))
    saved_step = step if resumed else None
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not proc.is_main, dynamic_ncols=True)
    while step < end:
        started = time.perf_counter()
        lr = set_learning_rate(optimizer, cfg, step)
        micro_batches = [next(batches) for _ in range(cfg.grad_accum)]
        losses = accumulate_gradients(model, base, clip_vision, teachers, micro_batches, cfg, scaler)
        diverged = guard.check(losses)
        if diverged:
            raise TrainingDiverged(divergence_message(diverged, step + 1, saved_step, out_dir, source, cfg))
        grad_norm = optimizer_step(net, optimizer, scaler, cfg.grad_clip)
        ema.update(net, step)
        step += 1
        seconds = time.perf_counter() - started
        record = {"step": step, **losses, "lr": lr, "grad_norm": grad_norm, "samples_per_s": global_batch / seconds}
        bar.update(1)
        bar.set_postfix(**{name: f"{value:.4g}" for name, value in losses.items()},
                        samples_s=f"{global_batch / seconds:.1f}")
        if step % cfg.log_every == 0 or step == end:
            run_log.write(record)
        if step % cfg.ckpt_every == 0 or step == end:
            if proc.is_main:
                save_checkpoints(out_dir, step, net, ema, optimizer, scaler, cfg, proc.world, record, len(skipped),
                                 guard.recent_values())
            saved_step = step
        if previews and step % cfg.sample_every == 0:
            save_grid(preview(base, ema.net, clip_vision, *previews, cfg.seed), out_dir, step)
    bar.close()
    distributed.barrier()  # every rank leaves after rank 0 has written its last files
    return record


def open_run(cfg: TrainConfig, out_dir: Path, proc: distributed.Process) -> tuple[dict, dict] | None:
    """The resume checkpoint's (document, tensors) when resuming; refuses to overwrite an existing run otherwise."""
    path = out_dir / RESUME_FILE
    if not cfg.resume:
        if path.exists():
            raise ValueError(f"{out_dir} already holds a run ({RESUME_FILE}); continue it with --resume, or choose "
                             f"another out_dir")
        return None
    if not path.is_file():
        raise ValueError(f"resume = true but there is no {path}; start a new run without --resume")
    document, tensors = read_resume(str(path))
    # a field newer than the run has its default there: defaults keep the behaviour from before the field existed
    stored, current = {**FIELD_DEFAULTS, **document["config"]}, cfg.to_dict()
    changed = sorted(k for k in set(stored) | set(current)
                     if k not in RESUMABLE_CHANGES and stored.get(k) != current.get(k))
    if changed:
        diffs = ", ".join(f"{k}: run {stored.get(k)!r}, now {current.get(k)!r}" for k in changed)
        raise ValueError(f"cannot resume {path} with a different config ({diffs}); use the run's own config "
                         f"(only {sorted(RESUMABLE_CHANGES)} may change), or start a new out_dir")
    if document["world"] != proc.world:
        raise ValueError(f"{path} was written by a run on {document['world']} processes, this one has {proc.world}; "
                         f"resume with torchrun --nproc_per_node {document['world']} (the global batch depends on it)")
    log.info("resuming %s at step %d", out_dir, document["step"])
    return document, tensors


def build_hypernet(cfg: TrainConfig, base: FrozenBase, clip_vision: FrozenClipVision | None) -> HyperNet:
    """A fresh hypernet (seeded) for the attention layers of the base UNet, reading the configured encoder."""
    if clip_vision is None:
        spec = EncoderSpec("embedded", image_size=cfg.image_size, token_dim=cfg.token_dim, width=cfg.encoder_width)
    else:
        sizes = {dim: name for name, dim in CLIP_VISION_TOKEN_DIMS.items()}
        if clip_vision.token_dim not in sizes:
            raise ValueError(f"{cfg.clip_vision} gives {clip_vision.token_dim}-d tokens; the nodes know CLIP vision "
                             f"models of {sorted(sizes)} dimensions")
        spec = EncoderSpec("clip_vision", image_size=224, token_dim=clip_vision.token_dim,
                           clip_vision_size=sizes[clip_vision.token_dim])
    family, targets = family_targets(base.diffusion_model)
    config = HyperNetConfig(family=family, targets=tuple(targets), rank=cfg.rank,
                            alpha=cfg.alpha, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                            encoder=spec)
    torch.manual_seed(cfg.seed)
    return HyperNet(config)


def start_from(net: HyperNet, path: str) -> None:
    """Load the weights of the exported hypernet at `path` into `net`, whose architecture it must have."""
    loaded, _ = hypernet.load(path, expect_family=net.config.family)
    if loaded.config != net.config:
        ours, theirs = net.config.to_dict(), loaded.config.to_dict()

        def shown(key: str, value) -> str:
            return f"{len(value)} target layers" if key == "targets" else repr(value)

        diffs = ", ".join(f"{k}: file {shown(k, theirs[k])}, config {shown(k, ours[k])}"
                          for k in ours if ours[k] != theirs[k])
        raise ValueError(f"init_from {path} is a hypernet of another architecture ({diffs}); set the config's model "
                         f"fields to the file's, or start without init_from")
    net.load_state_dict(loaded.state_dict())
    log.info("starting from the weights of %s", path)


def make_optimizer(net: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (nanoGPT's split)."""
    params = list(net.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to lr over warmup_steps, then cosine decay to lr·MIN_LR_RATIO at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def set_learning_rate(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> float:
    lr = learning_rate(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class SubjectToLoRA(nn.Module):
    """Reference images (embedded encoder) or CLIP vision tokens → PredictedLoRA in one forward: what DDP wraps."""

    def __init__(self, net: HyperNet):
        super().__init__()
        self.net = net

    def forward(self, subject: Tensor) -> PredictedLoRA:
        return self.net(self.net.encode(subject) if self.net.encoder is not None else subject)


def subject_input(references: Tensor, clip_vision: FrozenClipVision | None) -> Tensor:
    """What SubjectToLoRA reads: the reference images themselves, or their frozen CLIP vision tokens."""
    return references if clip_vision is None else clip_vision.tokens(references)


def sample_noise(seeds: Tensor, latent_shape: torch.Size, base: FrozenBase) -> tuple[Tensor, Tensor]:
    """Per sample, from its own seed: σ of a timestep uniform over the training schedule, and Gaussian noise."""
    timesteps, noise = [], []
    for seed in seeds.tolist():
        generator = torch.Generator().manual_seed(seed)
        timesteps.append(torch.randint(base.num_timesteps, (1,), generator=generator))
        noise.append(torch.randn(latent_shape, generator=generator))
    sigma = base.model_sampling.sigmas[torch.cat(timesteps).to(base.device)]
    return sigma, torch.stack(noise).to(base.device)


def autocast(device: torch.device, amp: str):
    """Autocast in the configured half precision, or nothing."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


@contextlib.contextmanager
def batch_losses(model: nn.Module, base: FrozenBase, batch: dict, clip_vision: FrozenClipVision | None = None,
                 amp: str = "none", subject_loss_weight: float = 0.0, teachers: PredictedLoRA | None = None,
                 denoise: bool = True):
    """Yields the batch's losses: `mse`, the denoising MSE of the personalized UNet on the targets (0 without
    `denoise`: the UNet is not run); `reg`, the mean predicted-weight L2 over the subjects; and with `teachers`,
    `teacher`, the mean relative distance of each predicted LoRA to its subject's teacher (batch["subject"]).

    A context manager: the LoRA hooks stay on the UNet until the caller's backward pass is done, because gradient
    checkpointing runs the UNet blocks again there.
    """
    subject = subject_input(batch["reference"], clip_vision).to(base.device)
    with autocast(base.device, amp):
        lora = model(subject)
    exact = lora.to(torch.float32)
    losses = {"reg": weight_l2(exact).mean()}
    if teachers is not None:
        losses["teacher"] = relative_distance(exact, teachers.select(batch["subject"].to(base.device))).mean()
    if not denoise:
        yield {"mse": torch.zeros((), device=base.device), **losses}
        return
    latents = base.encode_images(batch["target"])
    text = base.encode_text(batch["caption"])
    sigma, noise = sample_noise(batch["seed"], latents.shape[1:], base)
    with PerSampleLoRA(base.diffusion_model, lora):  # row i ↔ subject i
        with autocast(base.device, amp):
            x_noisy = base.model_sampling.noise_scaling(sigma, noise, latents)
            prediction = base.predict(x_noisy, sigma, text)
        yield {"mse": denoising_loss(prediction, base.target(noise, latents), batch.get("target_mask"),
                                     subject_loss_weight), **losses}


def accumulate_gradients(model: nn.Module, base: FrozenBase, clip_vision: FrozenClipVision | None,
                         teachers: PredictedLoRA | None, micro_batches: list[dict], cfg: TrainConfig,
                         scaler: torch.amp.GradScaler) -> dict:
    """Forward + backward of every micro-batch of a step (DDP syncs on the last); losses averaged over all ranks."""
    names = ("mse", "reg") + (("teacher",) if teachers is not None else ())
    weights = {"mse": cfg.denoising_weight, "reg": cfg.reg_lambda, "teacher": cfg.teacher_weight}
    totals = torch.zeros(len(names), device=base.device)
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with batch_losses(model, base, batch, clip_vision, cfg.amp, cfg.subject_loss_weight, teachers,
                              denoise=cfg.denoising_weight > 0) as losses:
                total = sum(weights[name] * losses[name] for name in names)
                scaler.scale(total / len(micro_batches)).backward()
        totals += torch.stack([losses[name].detach() for name in names]) / len(micro_batches)
    means = dict(zip(names, distributed.mean_over_ranks(totals).tolist()))
    return {"loss": sum(weights[name] * value for name, value in means.items()), **means}


def optimizer_step(net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   grad_clip: float) -> float:
    """Unscale, clip the global gradient norm, step, clear; returns the norm before clipping."""
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip if grad_clip > 0 else math.inf)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


class DivergenceGuard:
    """Stops a run before a bad step updates or saves anything: a NaN or infinite loss, or a denoising loss or weight
    L2 above `factor` × its median over the last `window` steps (factor 0: NaN and infinity only).

    A spike of either is how a run diverges before it turns NaN; the median ignores the ordinary noise of single
    batches. The check starts once the window is full, so the start of training cannot trigger it, and the window is
    stored in the resume checkpoint, so a resumed run checks exactly as an uninterrupted one.
    """

    def __init__(self, factor: float, window: int, recent: dict[str, list[float]]):
        self.factor = factor
        self.recent = {name: collections.deque(recent.get(name, ()), maxlen=window) for name in WATCHED}

    def check(self, losses: dict) -> str | None:
        """What diverged, as the start of the stop message; None (and the values join the window) when nothing did."""
        if not math.isfinite(losses["loss"]):
            parts = ", ".join(f"{name} {losses[name]}" for name in WATCHED if name in losses)
            return f"loss is {losses['loss']} ({parts})"
        for name, quantity in WATCHED.items():
            if name not in losses:
                continue
            median = self.median(name)
            if self.factor and median > 0 and losses[name] > self.factor * median:
                return (f"{quantity} jumped to {name} = {losses[name]:.6g}, {losses[name] / median:.0f} times its "
                        f"median {median:.4g} over the last {len(self.recent[name])} steps (divergence_factor "
                        f"{self.factor:g})")
        for name in WATCHED:
            if name in losses:
                self.recent[name].append(losses[name])
        return None

    def median(self, name: str) -> float:
        """The running median of `name`, or 0 (no check) while its window is not yet full."""
        values = self.recent[name]
        return statistics.median(values) if len(values) == values.maxlen else 0.0

    def recent_values(self) -> dict[str, list[float]]:
        return {name: list(values) for name, values in self.recent.items()}


def divergence_message(diverged: str, step: int, saved_step: int | None, out_dir: Path, source: str,
                       cfg: TrainConfig) -> str:
    """The stop message: what diverged at which step, which checkpoint is left, and what to change before resuming."""
    if saved_step is None:
        kept, then = "no checkpoint was written yet", "start the run again"
    elif saved_step == step - 1:  # this step's losses were measured on the weights of that very checkpoint
        kept, then = (f"the checkpoint of step {saved_step} is kept, though this value was measured on its weights",
                      "continue with --resume (or start again if it diverges at once)")
    else:
        kept, then = f"the checkpoint of step {saved_step} is kept, the last good one", "continue with --resume"
    return (f"{diverged} at step {step} of the run configured by {source}; stopped before updating the weights, "
            f"with no checkpoint of this state, and in {out_dir} {kept}. Lower lr ({cfg.lr:g}) or grad_clip "
            f"({cfg.grad_clip:g}), or raise reg_lambda ({cfg.reg_lambda:g}) if the weight L2 jumped, then {then}")


def save_checkpoints(out_dir: Path, step: int, net: HyperNet, ema: EMA, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, cfg: TrainConfig, world: int, record: dict,
                     skipped_images: int, recent: dict[str, list[float]]) -> None:
    """The resume state (with the divergence guard's window, `recent`), then the nodes' checkpoint with the EMA
    weights; each written atomically."""
    summary = {"step": step, **{name: record[name] for name in ("loss", *WATCHED) if name in record},
               "skipped_images": skipped_images}
    save_resume(str(out_dir / RESUME_FILE), step, net, ema.net, optimizer, scaler, cfg.to_dict(), world,
                {**summary, "recent": recent})
    hypernet.save(str(out_dir / HYPERNET_FILE), ema.net, training={"config": cfg.to_dict(), **summary})


def held_out_references(subjects: list, image_size: int) -> tuple[Tensor, list[str]] | None:
    """The first image (centre square) and caption of each held-out subject, for the sample grids."""
    if not subjects:
        return None
    images = [centre_square(load_rgb(s.images[0]), image_size) for s in subjects]
    return torch.stack(images), [s.captions[0] for s in subjects]


@torch.no_grad()
def preview(base: FrozenBase, net: HyperNet, clip_vision: FrozenClipVision | None, references: Tensor,
            captions: list[str], seed: int):
    """The sample grid of the held-out subjects with the given (EMA) net."""
    lora = SubjectToLoRA(net)(subject_input(references, clip_vision).to(base.device))
    return sample_grid(base, lora, references, captions, seed)


def log_start(cfg: TrainConfig, net: HyperNet, proc: distributed.Process, n_images: int, global_batch: int,
              step: int) -> None:
    if proc.is_main:
        sizes = count_parameters(net.config)
        log.info("hypernet: %d targets, decoder %.2fM + encoder %.2fM parameters, %d LoRA numbers per subject",
                 len(net.config.targets), sizes.decoder / 1e6, sizes.encoder / 1e6, sizes.outputs)
        log.info("training on %d images, global batch %d (%d × %d ranks × %d accumulation), from step %d to %d on %s",
                 n_images, global_batch, cfg.batch_size, proc.world, cfg.grad_accum, step, cfg.max_steps,
                 proc.device)


class RunLog:
    """JSON lines in out_dir/log.jsonl, rank 0 only; lines past `keep_until` (a resumed step) are dropped."""

    def __init__(self, path: Path, enabled: bool, keep_until: int):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = []
            if path.exists():
                kept = [line for line in path.read_text().splitlines()
                        if line.strip() and json.loads(line).get("step", 0) <= keep_until]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
