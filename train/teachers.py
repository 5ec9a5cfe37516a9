"""Teacher LoRAs for the weight-space loss (HyperDreamBooth's recipe): one LoRA per training subject, fine-tuned on
its images, which the hypernet learns to predict from any one image of the subject.

    python -m train.teachers --config FILE.toml [--steps 200] [--images 8] [--seeds 1] [--key value …]

writes `<teacher_dir>/<subject id>.safetensors` for every training subject of the config's data (a standard LoRA
file, loadable by LoraLoader), fine-tuned with the config's base model, rank, alpha, seed and subject_loss_weight.
Every teacher starts from the same initial LoRA and sees the same noise, so teachers differ by their subjects alone.
With `--seeds N` each subject is fine-tuned N times (seeds seed … seed + N − 1, into `<teacher_dir>/seed_<s>/`) and
its teacher is their average, a LoRA of N times the rank: the part of a teacher that comes from its seed shrinks,
the part that comes from its subject stays.
A teacher already there with the same settings is kept, so an interrupted run continues where it stopped; one made
with other settings stops the run (nothing is overwritten). Any LoRA file of the hypernet's targets can be a teacher.
"""
import dataclasses
import json
import logging
from pathlib import Path

import safetensors.torch
import torch

from hypernet import to_lora_state_dict, write_atomic

from .base_model import FrozenBase, import_comfy
from .config import TrainConfig, build_parser, config_from_args
from .data import Subject, centre_square, load_mask, load_rgb, require_masks, scan_subjects, split_held_out
from .finetune import LEARNING_RATE, finetune_lora
from .teacher_files import METADATA_KEY, average_teachers, check_settings, teacher_path

log = logging.getLogger(__name__)

DEFAULT_STEPS = 200
DEFAULT_IMAGES = 8
# LoRA gradients are ~1e-6 (median): with Adam's default ε (1e-8) every direction, even one the loss barely sees, moves
# by a full step, and two teachers of one subject (two seeds) end nearly as far apart as teachers of two subjects
# (relative distance 1.47 against 1.58, miniature world); ε = 1e-5 keeps such directions still (1.40 against 1.76).
ADAM_EPS = 1e-5


def make_teachers(cfg: TrainConfig, steps: int = DEFAULT_STEPS, images: int = DEFAULT_IMAGES, seeds: int = 1,
                  base: FrozenBase | None = None) -> list[Path]:
    """Fine-tune (or keep) the teacher of every training subject; their paths. `base`: reuse a loaded base."""
    if not cfg.teacher_dir:
        raise ValueError("config teacher_dir is empty: set it to the folder the teachers go to")
    if steps <= 0 or images <= 0 or seeds <= 0:
        raise ValueError(f"teachers need steps > 0, images > 0 and seeds > 0, got steps {steps}, images {images}, "
                         f"seeds {seeds}")
    subjects, _ = split_held_out(scan_subjects(cfg.data_dir, cfg.class_word, cfg.on_bad_image)[0], cfg.held_out)
    if cfg.subject_loss_weight > 0:
        require_masks(subjects)
    settings = {"base_checkpoint": cfg.base_checkpoint, "rank": cfg.rank, "alpha": cfg.alpha, "seed": cfg.seed,
                "subject_loss_weight": cfg.subject_loss_weight, "image_size": cfg.image_size, "steps": steps,
                "images": images, "lr": LEARNING_RATE, "adam_eps": ADAM_EPS}
    if seeds == 1:
        return fine_tune_each(cfg, subjects, steps, images, settings, base)[0]
    averaged = {**settings, "seeds": seeds}
    paths = [teacher_path(cfg.teacher_dir, subject.id) for subject in subjects]
    for path in paths:  # before any fine-tuning: a teacher made otherwise stops the run here
        if path.exists():
            check_settings(path, averaged)
    runs = []
    for seed in range(cfg.seed, cfg.seed + seeds):
        one_seed = dataclasses.replace(cfg, seed=seed, teacher_dir=str(Path(cfg.teacher_dir) / f"seed_{seed}"))
        seed_paths, base = fine_tune_each(one_seed, subjects, steps, images, {**settings, "seed": seed}, base)
        runs.append(seed_paths)
    for path, parts in zip(paths, zip(*runs)):
        if not path.exists():
            write_atomic(path, safetensors.torch.save(average_teachers(parts),
                                                      metadata={METADATA_KEY: json.dumps(averaged)}))
    log.info("teachers: %d subjects, each the average of %d seeds, in %s", len(paths), seeds, cfg.teacher_dir)
    return paths


def fine_tune_each(cfg: TrainConfig, subjects: list[Subject], steps: int, images: int, settings: dict,
                   base: FrozenBase | None) -> tuple[list[Path], FrozenBase | None]:
    """One teacher per subject with the config's seed, kept if there already; their paths, and the base if loaded."""
    paths = []
    for n, subject in enumerate(subjects, 1):
        path = teacher_path(cfg.teacher_dir, subject.id)
        paths.append(path)
        if path.exists():
            check_settings(path, settings)
            log.info("teacher %d/%d: %s is there already", n, len(subjects), path)
            continue
        if base is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            import_comfy(cpu=device.type == "cpu")
            base = FrozenBase.load(cfg.base_checkpoint, device, vae=cfg.base_vae, text_cache=cfg.text_cache)
        pictures, captions, masks = subject_images(subject, images, cfg.image_size, cfg.subject_loss_weight > 0)
        ((_, lora, seconds),) = finetune_lora(base, pictures, captions, cfg.rank, cfg.alpha, (steps,), cfg.seed, masks,
                                             cfg.subject_loss_weight, adam_eps=ADAM_EPS)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, safetensors.torch.save(to_lora_state_dict(lora.to("cpu")),
                                                  metadata={METADATA_KEY: json.dumps(settings)}))
        log.info("teacher %d/%d: %s (%.0f s)", n, len(subjects), path, seconds)
    return paths, base


def subject_images(subject: Subject, count: int, size: int, with_masks: bool):
    """The first `count` images of a subject (centre squares, N×size×size×3), their captions, and their masks."""
    pictures = [load_rgb(path) for path in subject.images[:count]]
    masks = None
    if with_masks:
        masks = torch.stack([centre_square(load_mask(mask, picture.size), size)
                             for mask, picture in zip(subject.masks, pictures)])
    return torch.stack([centre_square(picture, size) for picture in pictures]), list(subject.captions[:count]), masks


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser(prog="python -m train.teachers", description=__doc__)
    group = parser.add_argument_group("teachers")
    group.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="fine-tuning steps per teacher")
    group.add_argument("--images", type=int, default=DEFAULT_IMAGES, help="images per subject it learns from")
    group.add_argument("--seeds", type=int, default=1, help="fine-tunes per subject, averaged into its teacher")
    args = vars(parser.parse_args(argv))
    steps, images, seeds = args.pop("steps"), args.pop("images"), args.pop("seeds")
    config, _ = config_from_args(args)
    try:
        make_teachers(config, steps, images, seeds)
    except ValueError as e:
        log.error("%s", e)
        raise SystemExit(1) from e


if __name__ == "__main__":
    main()
