"""The trainer's one config: a frozen dataclass from TOML + `--key value` overrides, stored in every checkpoint."""
import argparse
import dataclasses
import types
from dataclasses import dataclass, field, fields
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as a package (pip install tomli)
    import tomli as tomllib

# Fields that may differ between a run and its resumption: what is reported, when and where, and when a run stops;
# lr, grad_clip and reg_lambda, the knobs to turn before resuming a run that the divergence guard stopped; and the
# weights of the losses, so that a run can go on to a second stage with another objective (these change the math from
# the resumed step on).
RESUMABLE_CHANGES = frozenset({"resume", "stop_at", "log_every", "ckpt_every", "sample_every", "num_workers",
                               "out_dir", "divergence_factor", "divergence_window", "lr", "grad_clip", "reg_lambda",
                               "denoising_weight", "teacher_weight"})


def param(default, help: str, group: str, choices: tuple | None = None):
    """A config field with its --help text, its section in the TOML file and --help, and optional choices."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices})


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on; `to_dict()` is stored in the hypernet and resume checkpoints."""

    # data
    data_dir: str = param("", "folder of subject images: <subject_id>/*.png (several images per subject), or images "
                              "directly in it (one subject each); an optional caption <image>.txt beside each", "data")
    image_size: int = param(64, "training resolution in pixels (square; a multiple of 16)", "data")
    class_word: str = param("toy", "caption 'a <class_word>' for images without a .txt caption", "data")
    on_bad_image: str = param("skip", "an unreadable image: 'skip' reports and skips it, 'stop' ends the run", "data",
                              ("skip", "stop"))
    flip: bool = param(True, "random horizontal flips", "data")
    crop: str = param("random", "'random' square crops of 0.8 to 1 times the shorter side, or the 'center' square",
                      "data", ("random", "center"))
    held_out: int = param(2, "subjects kept out of training and shown in the sample grids", "data")
    num_workers: int = param(0, "DataLoader worker processes per rank (0: load in the training process)", "data")

    # model
    base_checkpoint: str = param("", "frozen base model: a standard SD1.5- or SDXL-family .safetensors checkpoint "
                                     "with its VAE and text encoder, or a diffusion model alone (as Flux ships) with "
                                     "base_vae and text_cache", "model")
    base_vae: str = param("", "VAE file of a base_checkpoint that is a diffusion model alone (Flux: ae.safetensors)",
                          "model")
    text_cache: str = param("", "captions encoded once by python -m train.text_cache (README): the text encoder is "
                                "then never loaded; required with base_vae", "model")
    rank: int = param(4, "rank of the predicted LoRAs", "model")
    alpha: float = param(4.0, "LoRA alpha; the LoRA scale is alpha / rank", "model")
    d_model: int = param(256, "width of the weight decoder", "model")
    n_layers: int = param(2, "cross-attention layers of the weight decoder", "model")
    n_heads: int = param(4, "attention heads of the weight decoder (must divide d_model)", "model")
    encoder: str = param("embedded", "image encoder: 'embedded' (a small CNN trained with the decoder) or "
                                     "'clip_vision' (a frozen CLIP vision model)", "model", ("embedded", "clip_vision"))
    clip_vision: str = param("", "CLIP vision .safetensors file, for encoder = 'clip_vision'", "model")
    token_dim: int = param(256, "token width of the embedded encoder (CLIP vision fixes its own)", "model")
    encoder_width: int = param(64, "channels of the embedded encoder's CNN", "model")
    init_from: str = param("", "start from the weights of this exported hypernet (hypernet.safetensors) instead of "
                               "random ones: a second stage with another objective, or more training of a "
                               "released hypernet; its architecture must be the one this config builds", "model")

    # objective
    reg_lambda: float = param(0.01, "coefficient of the L2 penalty on the predicted weights (mean over subjects of "
                                    "sum over layers of ||ΔW||²)", "objective")
    subject_loss_weight: float = param(0.0, "extra weight of the denoising loss where the target's mask "
                                            "(<image stem>.mask.png, white = subject) is white: weights 1 + this × "
                                            "mask per latent cell, mean 1 per image; 0: plain MSE, no masks needed",
                                       "objective")
    denoising_weight: float = param(1.0, "weight of the denoising loss (0: train on the teacher loss alone, without "
                                         "running the UNet: a fast first stage)", "objective")
    teacher_weight: float = param(0.0, "weight of the weight-space loss: the predicted LoRA's squared distance to "
                                       "the subject's teacher LoRA, relative to the teacher's (HyperDreamBooth's "
                                       "recipe); teachers from python -m train.teachers", "objective")
    teacher_dir: str = param("", "folder of teacher LoRAs, <subject id>.safetensors for every training subject",
                             "objective")

    # optimization
    lr: float = param(1e-4, "peak learning rate (AdamW); cosine decay to lr/10 after the warmup", "optimization")
    weight_decay: float = param(0.01, "AdamW weight decay on matrices (not on norms and biases)", "optimization")
    warmup_steps: int = param(100, "linear learning-rate warmup steps", "optimization")
    max_steps: int = param(10_000, "optimizer steps of the whole run", "optimization")
    batch_size: int = param(4, "samples per rank per micro-batch; global batch = batch_size × ranks × grad_accum",
                            "optimization")
    grad_accum: int = param(1, "micro-batches accumulated per optimizer step", "optimization")
    grad_clip: float = param(1.0, "clip the global gradient norm to this (0: no clipping)", "optimization")
    ema_decay: float = param(0.999, "EMA of the hypernet weights, the weights that are exported (0: no averaging)",
                             "optimization")
    seed: int = param(0, "seed of the initial weights, data order, augmentations, noise and timesteps",
                      "optimization")
    amp: str = param("none", "autocast precision: 'none', 'bf16' or 'fp16' (with loss scaling); meant for GPUs (on a "
                             "CPU bf16 runs, fp16 is slow)",
                     "optimization", ("none", "bf16", "fp16"))
    grad_checkpointing: bool = param(False, "recompute the frozen UNet's blocks in the backward pass to save memory",
                                     "optimization")

    # logging and checkpointing
    out_dir: str = param("out", "run folder: hypernet.safetensors, resume.safetensors, log.jsonl, samples/",
                         "logging")
    log_every: int = param(10, "steps between log lines", "logging")
    ckpt_every: int = param(500, "steps between checkpoints (a checkpoint is also written at the end)", "logging")
    sample_every: int = param(500, "steps between sample grids of the held-out subjects (0: never)", "logging")
    resume: bool = param(False, "continue the run in out_dir from its resume.safetensors", "logging")
    stop_at: int = param(0, "end this invocation after this step, with a checkpoint; the schedule still runs to "
                            "max_steps, so a later --resume continues the same run (0: run to max_steps)", "logging")
    divergence_factor: float = param(100.0, "stop the run, before that step's update and with no new checkpoint, "
                                            "when the denoising loss or the weight L2 exceeds this many times its "
                                            "median over the last divergence_window steps (0: stop only on a NaN or "
                                            "infinite loss)", "logging")
    divergence_window: int = param(50, "steps in that running median; the check starts once it holds this many, so "
                                       "the start of training cannot trigger it", "logging")

    def __post_init__(self):
        for f in fields(self):
            choices = f.metadata["choices"]
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"config {f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")
        positive = ("image_size", "rank", "d_model", "n_heads", "token_dim", "encoder_width", "max_steps",
                    "batch_size", "grad_accum", "log_every", "ckpt_every", "divergence_window")
        non_negative = ("n_layers", "held_out", "num_workers", "reg_lambda", "subject_loss_weight",
                        "denoising_weight", "teacher_weight", "weight_decay", "warmup_steps", "grad_clip",
                        "sample_every", "stop_at", "divergence_factor")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"config {name} must be > 0, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"config {name} must be ≥ 0, got {getattr(self, name)}")
        if self.image_size % 16:
            raise ValueError(f"config image_size must be a multiple of 16 (VAE and encoder downsampling), "
                             f"got {self.image_size}")
        if self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError(f"config needs lr > 0 and 0 ≤ ema_decay < 1, got lr {self.lr}, "
                             f"ema_decay {self.ema_decay}")
        if 0 < self.divergence_factor <= 1:
            raise ValueError(f"config divergence_factor must be 0 (no check) or > 1 (a factor 1 would stop at every "
                             f"loss above its median), got {self.divergence_factor}")
        if self.encoder_width % 8:
            raise ValueError(f"config encoder_width must be a multiple of 8 (GroupNorm groups), "
                             f"got {self.encoder_width}")
        if self.d_model % self.n_heads:
            raise ValueError(f"config d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.denoising_weight == 0 and self.teacher_weight == 0:
            raise ValueError("config denoising_weight and teacher_weight are both 0: nothing to train on; set "
                             "denoising_weight > 0, or teacher_weight > 0 with teacher_dir")
        if self.teacher_weight > 0 and not self.teacher_dir:
            raise ValueError("config teacher_weight > 0 needs teacher_dir = the folder of the teacher LoRAs "
                             "(python -m train.teachers makes them)")
        if self.encoder == "clip_vision" and not self.clip_vision:
            raise ValueError("config encoder = 'clip_vision' needs clip_vision = the path of a CLIP vision "
                             ".safetensors file")

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from plain values; unknown fields and wrong types are a ValueError naming the field."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; known fields: {sorted(known)}")
        return cls(**{name: _checked(known[name], value) for name, value in values.items()})

    @classmethod
    def from_toml(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a TOML file (flat, or with [data], [model]… sections) and apply keyword overrides."""
        try:
            document = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"cannot read the config file {path}: {e}") from e
        values = {}
        for key, value in document.items():
            values.update(value if isinstance(value, dict) else {key: value})
        return cls.from_dict({**values, **overrides})


FIELD_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}  # also what a run from before a field had


def _checked(f: dataclasses.Field, value):
    """`value` as the type of field `f` (an int is accepted for a float), or a ValueError."""
    kind = _field_type(f)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"config {f.name} must be of type {kind.__name__}, got {value!r}")
    return value


def _field_type(f: dataclasses.Field) -> type:
    """The plain type of a field (`X | None` → X)."""
    kind = f.type
    if isinstance(kind, types.UnionType):
        kind = next(t for t in kind.__args__ if t is not type(None))
    return kind


def _parse_bool(text: str) -> bool:
    """true/false, yes/no, 1/0 → bool."""
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser(prog: str = "python -m train",
                 description: str = "Train a HyperSubject hypernetwork. Options override the --config TOML file, "
                                    "which overrides the defaults.") -> argparse.ArgumentParser:
    """`--config FILE` plus one `--<field>` option per config field, typed and documented from the dataclass."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML config file (see train/example.toml)")
    add_config_options(parser, TrainConfig)
    return parser


def add_config_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One `--<field>` option per field of a config dataclass: typed (a bool takes true/false, or nothing for true),
    help, choices and --help section from the field's metadata; options not given stay out of the parsed namespace,
    so the dataclass (or a config file) supplies their values."""
    groups = {}
    for f in fields(config_cls):
        section = f.metadata.get("group")
        target = groups.setdefault(section, parser.add_argument_group(section)) if section else parser
        kind = _field_type(f)
        extra = {"nargs": "?", "const": True, "type": _parse_bool} if kind is bool else {"type": kind}
        target.add_argument(f"--{f.name}", default=argparse.SUPPRESS, choices=f.metadata.get("choices"),
                            help=f"{f.metadata.get('help', '')} (default: {f.default!r})", **extra)


def parse_cli(argv: list[str] | None = None) -> tuple[TrainConfig, str]:
    """The config from the command line, and where it came from (for error messages)."""
    return config_from_args(vars(build_parser().parse_args(argv)))


def config_from_args(args: dict) -> tuple[TrainConfig, str]:
    """The config from parsed `--config` and `--<field>` options, and where it came from; a bad one exits."""
    path = args.pop("config", None)
    try:
        config = TrainConfig.from_toml(path, **args) if path else TrainConfig.from_dict(args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    return config, path or "the command line"
