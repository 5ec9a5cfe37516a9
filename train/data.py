"""Subject images on disk → training pairs (reference image, target image, caption) of one subject.

An image may have a mask beside it, `<image stem>.mask.png` (white where the subject is), which the trainer's
`subject_loss_weight` uses to weight the denoising loss towards the subject; mask files are never training images.

Every random choice of a sample (reference image, crop, flip, and the trainer's noise and timestep) is drawn from a
seed derived from (config seed, the sample's position in the global sample stream). So the data a step sees depends
on the step alone: not on the number of ranks or DataLoader workers, nor on whether the run was resumed.
"""
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MASK_SUFFIX = ".mask.png"
RANDOM_CROP_MIN = 0.8  # a random crop keeps 80–100 % of the shorter side
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


class BadImageError(ValueError):
    """An image file that cannot be read; the message names the file and the fix."""


@dataclass(frozen=True)
class Subject:
    """One subject: its id (folder name, or file stem for a flat folder), its images and their captions."""

    id: str
    images: tuple[Path, ...]
    captions: tuple[str, ...]

    @property
    def masks(self) -> tuple[Path | None, ...]:
        """Each image's mask file, or None where it has none."""
        return tuple(mask if (mask := mask_path(image)).is_file() else None for image in self.images)


def mask_path(image: Path) -> Path:
    """Where the mask of `image` lies: `<stem>.mask.png` beside it."""
    return image.with_name(image.stem + MASK_SUFFIX)


def require_masks(subjects: list[Subject]) -> None:
    """Every image of `subjects` has a mask, else a ValueError naming how many lack one, an example and the fix."""
    missing = [image for s in subjects for image, mask in zip(s.images, s.masks) if mask is None]
    if missing:
        raise ValueError(f"subject_loss_weight > 0 weights the loss by each target image's mask, but {len(missing)} "
                         f"training images have no mask, e.g. {missing[0]}: add "
                         f"{mask_path(missing[0]).name} beside it (white where the subject is), or set "
                         f"subject_loss_weight = 0")


def scan_subjects(data_dir: str, class_word: str, on_bad_image: str, report: bool = True
                  ) -> tuple[list[Subject], list[Path]]:
    """Subjects of `data_dir` sorted by id, and the unreadable images skipped (on_bad_image = 'skip')."""
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data_dir {str(root)!r} is not a folder: expected a folder of subject images "
                         f"(<subject_id>/*.png, or images directly in it)")
    groups = {p.stem: [p] for p in _images_in(root)}
    groups.update({d.name: _images_in(d) for d in sorted(root.iterdir()) if d.is_dir()})
    subjects, skipped = [], []
    for subject_id, paths in sorted(groups.items()):
        readable = []
        for path in paths:
            problem = _unreadable(path)
            if problem is None:
                readable.append(path)
            elif on_bad_image == "stop":
                raise BadImageError(f"cannot read the image {path} ({problem}); remove or replace it, or set "
                                    f"on_bad_image = 'skip'")
            else:
                skipped.append(path)
                if report:
                    log.warning("skipping unreadable image %s (%s)", path, problem)
        if readable:
            subjects.append(Subject(subject_id, tuple(readable), tuple(_caption(p, class_word) for p in readable)))
    if not subjects:
        raise ValueError(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) in {root} or its subfolders")
    if report:
        log.info("data: %d subjects, %d images in %s; %d unreadable images skipped",
                 len(subjects), sum(len(s.images) for s in subjects), root, len(skipped))
    return subjects, skipped


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.lower().endswith(MASK_SUFFIX))


def _unreadable(path: Path) -> str | None:
    """Why `path` is not a readable image (PIL's header and checksum check, no full decode), or None."""
    try:
        with Image.open(path) as image:
            image.verify()
    except _IMAGE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return None


def _caption(image: Path, class_word: str) -> str:
    """The text of <image>.txt beside the image, else 'a <class_word>'."""
    text_file = image.with_suffix(".txt")
    text = text_file.read_text(encoding="utf-8").strip() if text_file.is_file() else ""
    return text or f"a {class_word}"


def split_held_out(subjects: list[Subject], held_out: int) -> tuple[list[Subject], list[Subject]]:
    """(training subjects, the last `held_out` subjects by id, kept for sample grids)."""
    if held_out >= len(subjects):
        raise ValueError(f"held_out = {held_out} leaves no training subject: the data has {len(subjects)} "
                         f"subjects; lower held_out")
    return subjects[:len(subjects) - held_out], subjects[len(subjects) - held_out:]


def load_rgb(path: Path) -> Image.Image:
    """An image file as RGB, EXIF-rotated, transparency composited onto mid grey."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (128, 128, 128, 255)), rgba)
            return image.convert("RGB")
    except _IMAGE_ERRORS as e:  # passed the scan but fails to decode (e.g. truncated pixel data)
        raise BadImageError(f"cannot decode the image {path} ({e}); remove or replace it") from e


def load_mask(path: Path, size: tuple[int, int]) -> Image.Image:
    """A mask file as one 8-bit channel at the image's `size` (white: subject)."""
    try:
        with Image.open(path) as mask:
            mask = ImageOps.exif_transpose(mask).convert("L")
            return mask if mask.size == size else mask.resize(size, Image.Resampling.BILINEAR)
    except _IMAGE_ERRORS as e:
        raise BadImageError(f"cannot decode the mask {path} ({e}); remove or replace it") from e


def to_square(image: Image.Image, size: int, rng: np.random.Generator, random_crop: bool, flip: bool
              ) -> torch.Tensor:
    """A square crop (random position and scale, or the centre), maybe mirrored, resized → size×size×C in [0, 1]."""
    width, height = image.size
    side = min(width, height)
    if random_crop:
        side = max(1, round(side * rng.uniform(RANDOM_CROP_MIN, 1.0)))
        left, top = int(rng.integers(width - side + 1)), int(rng.integers(height - side + 1))
    else:
        left, top = (width - side) // 2, (height - side) // 2
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    if flip and rng.random() < 0.5:
        image = ImageOps.mirror(image)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def centre_square(image: Image.Image, size: int) -> torch.Tensor:
    """The centre square of an image, resized → size×size×C in [0, 1] (`to_square` without crop or flip draws)."""
    return to_square(image, size, np.random.default_rng(0), random_crop=False, flip=False)


def sample_seed(seed: int, n: int) -> int:
    """The seed of sample n of the global sample stream (a non-negative int64)."""
    return int(np.random.SeedSequence([seed, n]).generate_state(1, dtype=np.uint64)[0]) >> 1


class PairDataset(torch.utils.data.Dataset):
    """Key (image index, sample seed) → target image, a *different* image of the same subject as reference (when
    it has two or more), the target's caption, the seed for the trainer's noise and the subject's index in
    `subjects`; with `masks`, also the target's mask, cropped and flipped with it."""

    def __init__(self, subjects: list[Subject], image_size: int, flip: bool, random_crop: bool, masks: bool = False):
        self.subjects = subjects
        self.items = [(s, i) for s, subject in enumerate(subjects) for i in range(len(subject.images))]
        self.image_size, self.flip, self.random_crop = image_size, flip, random_crop
        if masks:
            require_masks(subjects)
        self.masks = masks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        s, i = self.items[index]
        subject = self.subjects[s]
        rng = np.random.default_rng(seed)
        j = i
        if len(subject.images) > 1:
            j = int(rng.integers(len(subject.images) - 1))
            j += j >= i
        view = dict(size=self.image_size, rng=rng, random_crop=self.random_crop, flip=self.flip)
        reference = to_square(load_rgb(subject.images[j]), **view)
        target = load_rgb(subject.images[i])
        crop_state = rng.bit_generator.state
        item = {"reference": reference, "target": to_square(target, **view), "caption": subject.captions[i],
                "seed": seed, "subject": s}
        if self.masks:
            rng.bit_generator.state = crop_state  # the same draws again: the target's own crop and flip
            item["target_mask"] = to_square(load_mask(subject.masks[i], target.size), **view)
        return item


class StepBatches(torch.utils.data.Sampler):
    """Batch sampler: this rank's micro-batches of keys for steps [start_step, end_step), DistributedSampler-style.

    One global order per epoch (a seeded permutation) is cut into global batches; micro-batch m of step t on rank r
    holds stream positions n = ((t·grad_accum + m)·world + r)·batch_size + j, j < batch_size.
    """

    def __init__(self, n_items: int, batch_size: int, grad_accum: int, rank: int, world: int, seed: int,
                 start_step: int, end_step: int):
        self.n_items, self.batch_size, self.grad_accum = n_items, batch_size, grad_accum
        self.rank, self.world, self.seed = rank, world, seed
        self.start_step, self.end_step = start_step, end_step
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return (self.end_step - self.start_step) * self.grad_accum

    def __iter__(self):
        for step in range(self.start_step, self.end_step):
            for micro in range(self.grad_accum):
                first = ((step * self.grad_accum + micro) * self.world + self.rank) * self.batch_size
                yield [self.key(n) for n in range(first, first + self.batch_size)]

    def key(self, n: int) -> tuple[int, int]:
        """(image index, sample seed) at stream position n."""
        epoch, position = divmod(n, self.n_items)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        return int(self._order[position]), sample_seed(self.seed, n)


def collate(samples: list[dict]) -> dict:
    """Stack images (B×H×W×3), masks (B×H×W), seeds and subject indices; captions stay a list."""
    batch = {"reference": torch.stack([s["reference"] for s in samples]),
             "target": torch.stack([s["target"] for s in samples]),
             "caption": [s["caption"] for s in samples],
             "seed": torch.tensor([s["seed"] for s in samples], dtype=torch.int64),
             "subject": torch.tensor([s["subject"] for s in samples], dtype=torch.int64)}
    if "target_mask" in samples[0]:
        batch["target_mask"] = torch.stack([s["target_mask"] for s in samples])
    return batch


def make_loader(dataset: PairDataset, batches: StepBatches, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader yielding this rank's micro-batches in order."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate)
