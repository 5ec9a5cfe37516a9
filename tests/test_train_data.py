"""The trainer's data: subject folders, captions, reference ≠ target pairs, unreadable images, rank shards."""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from train.data import BadImageError, PairDataset, StepBatches, make_loader, scan_subjects, split_held_out

COLOURS = [(220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 40), (200, 60, 200), (240, 240, 240)]


def write_subjects(root: Path, n_subjects: int = 4, n_images: int = 2, size: int = 64) -> Path:
    """root/subject_<s>/<i>.png: subject s is one coloured shape, placed differently in each image; captions for
    image 0 only (the others fall back to 'a <class_word>')."""
    for s in range(n_subjects):
        folder = root / f"subject_{s}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_images):
            rng = np.random.default_rng(100 * s + i)
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 90, 3)))
            x, y = (int(v) for v in rng.integers(4, size // 3, 2))
            extent = size // 3 + 4 * s
            draw = ImageDraw.Draw(image)
            (draw.ellipse if s % 2 else draw.rectangle)([x, y, x + extent, y + extent], fill=COLOURS[s % 6])
            image.save(folder / f"{i}.png")
            if i == 0:
                (folder / f"{i}.txt").write_text(f"a toy on a dark background, number {s}\n")
    return root


def test_subfolders_are_subjects_and_each_image_gets_its_caption_or_the_class_word(tmp_path):
    write_subjects(tmp_path, n_subjects=3, n_images=2)
    (tmp_path / "loose.png").write_bytes((tmp_path / "subject_0" / "0.png").read_bytes())
    subjects, skipped = scan_subjects(str(tmp_path), "plush", "skip")
    assert [s.id for s in subjects] == ["loose", "subject_0", "subject_1", "subject_2"] and skipped == []
    assert [len(s.images) for s in subjects] == [1, 2, 2, 2]
    assert subjects[2].captions == ("a toy on a dark background, number 1", "a plush")
    training, held_out = split_held_out(subjects, 1)
    assert [s.id for s in held_out] == ["subject_2"] and len(training) == 3
    with pytest.raises(ValueError, match="held_out = 4 leaves no training subject"):
        split_held_out(subjects, 4)


def test_the_reference_is_another_image_of_the_same_subject_when_it_has_several(tmp_path):
    write_subjects(tmp_path, n_subjects=2, n_images=3)
    (tmp_path / "single").mkdir()
    Image.new("RGB", (80, 64), (10, 200, 30)).save(tmp_path / "single" / "only.png")
    subjects, _ = scan_subjects(str(tmp_path), "toy", "skip")
    dataset = PairDataset(subjects, 64, flip=False, random_crop=False)
    images = {(s, i): dataset.__getitem__((index, 0))["target"]
              for index, (s, i) in enumerate(dataset.items)}
    for index, (s, i) in enumerate(dataset.items):
        for seed in range(6):
            sample = dataset[(index, seed)]
            matches = [key for key, image in images.items() if torch.equal(image, sample["reference"])]
            assert len(matches) == 1 and matches[0][0] == s  # the same subject...
            assert (matches[0][1] != i) == (len(subjects[s].images) > 1)  # ...a different image when there is one
            assert sample["caption"] == subjects[s].captions[i]


def test_a_sample_is_a_function_of_its_key_alone(tmp_path):
    write_subjects(tmp_path, n_subjects=2, n_images=2)
    subjects, _ = scan_subjects(str(tmp_path), "toy", "skip")
    dataset = PairDataset(subjects, 48, flip=True, random_crop=True)
    a, b, c = dataset[(1, 7)], dataset[(1, 7)], dataset[(1, 8)]
    assert a["target"].shape == (48, 48, 3) and 0 <= a["target"].min() and a["target"].max() <= 1
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["reference"], b["reference"])
    assert not torch.equal(a["target"], c["target"])  # another seed: another crop


def test_two_ranks_split_each_global_batch_into_disjoint_shards_of_the_single_process_batch():
    single = list(StepBatches(10, batch_size=4, grad_accum=2, rank=0, world=1, seed=3, start_step=0, end_step=5))
    ranks = [list(StepBatches(10, batch_size=2, grad_accum=2, rank=r, world=2, seed=3, start_step=0, end_step=5))
             for r in range(2)]
    assert len(single) == len(ranks[0]) == 10  # 5 steps × 2 micro-batches
    for step in range(5):
        for micro in range(2):
            # micro-batch m of a step: rank 0 and rank 1 together hold one slice of the global order
            global_keys = single[2 * step] + single[2 * step + 1]
            together = ranks[0][2 * step + micro] + ranks[1][2 * step + micro]
            assert together == global_keys[4 * micro:4 * micro + 4]
    epoch = [key[0] for batch in single[:5] for key in batch][:10]
    assert sorted(epoch) == list(range(10))  # every image once per epoch
    resumed = list(StepBatches(10, batch_size=4, grad_accum=2, rank=0, world=1, seed=3, start_step=3, end_step=5))
    assert resumed == single[6:]


def test_an_unreadable_image_is_reported_with_its_path_and_skipped_or_stops_the_scan(tmp_path, caplog):
    write_subjects(tmp_path, n_subjects=2, n_images=2)
    bad = tmp_path / "subject_1" / "corrupt.png"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    with caplog.at_level(logging.WARNING, logger="train.data"):
        subjects, skipped = scan_subjects(str(tmp_path), "toy", "skip")
    assert skipped == [bad] and [len(s.images) for s in subjects] == [2, 2]
    assert str(bad) in caplog.text
    with pytest.raises(BadImageError, match=f"cannot read the image {bad}.*on_bad_image = 'skip'"):
        scan_subjects(str(tmp_path), "toy", "stop")


def test_the_loader_yields_the_same_batches_with_or_without_worker_processes(tmp_path):
    write_subjects(tmp_path, n_subjects=2, n_images=2)
    subjects, _ = scan_subjects(str(tmp_path), "toy", "skip")
    dataset = PairDataset(subjects, 32, flip=True, random_crop=True)
    runs = [list(make_loader(dataset, StepBatches(len(dataset), 3, 1, 0, 1, 5, 0, 4), workers)) for workers in (0, 2)]
    assert len(runs[0]) == len(runs[1]) == 4
    for a, b in zip(*runs):
        assert a["caption"] == b["caption"] and torch.equal(a["seed"], b["seed"])
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["reference"], b["reference"])


def write_masks(root: Path) -> None:
    """<stem>.mask.png beside every image: white where the image is brighter than its background corner."""
    for image_path in sorted(root.glob("*/*.png")):
        pixels = np.asarray(Image.open(image_path).convert("RGB"), np.int16)
        foreground = np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 30
        mask = Image.fromarray((foreground * 255).astype(np.uint8), "L")
        mask.save(image_path.with_name(image_path.stem + ".mask.png"))


def test_masks_beside_images_are_found_and_are_never_training_images(tmp_path):
    write_subjects(tmp_path, n_subjects=2, n_images=2)
    write_masks(tmp_path)
    subjects, _ = scan_subjects(str(tmp_path), "toy", "stop")
    assert [len(s.images) for s in subjects] == [2, 2]
    assert all(mask.name == image.stem + ".mask.png" for s in subjects for image, mask in zip(s.images, s.masks))


def test_a_target_mask_gets_the_targets_own_random_crop_and_flip(tmp_path):
    write_subjects(tmp_path, n_subjects=3, n_images=2, size=80)
    write_masks(tmp_path)
    subjects, _ = scan_subjects(str(tmp_path), "toy", "stop")
    dataset = PairDataset(subjects, 32, flip=True, random_crop=True, masks=True)
    plain = PairDataset(subjects, 32, flip=True, random_crop=True)
    for index in range(len(dataset)):
        for seed in range(4):
            sample = dataset[(index, seed)]
            assert torch.equal(sample["target"], plain[(index, seed)]["target"])  # masks change no draw
            corner = sample["target"][0, 0] if sample["target_mask"][0, 0] < 0.5 else sample["target"][-1, -1]
            foreground = (sample["target"] - corner).abs().sum(-1) > 0.3
            agree = (foreground == (sample["target_mask"] > 0.5)).float().mean()
            assert sample["target_mask"].shape == (32, 32) and agree > 0.9


def test_a_missing_mask_is_named_with_the_file_to_add_when_masks_are_needed(tmp_path):
    write_subjects(tmp_path, n_subjects=2, n_images=2)
    write_masks(tmp_path)
    (tmp_path / "subject_1" / "0.mask.png").unlink()
    subjects, _ = scan_subjects(str(tmp_path), "toy", "stop")
    with pytest.raises(ValueError, match=r"1 training images have no mask, e.g. .*subject_1/0.png: add 0.mask.png "
                                         r"beside it .* or set subject_loss_weight = 0"):
        PairDataset(subjects, 32, flip=False, random_crop=False, masks=True)
    assert "target_mask" not in PairDataset(subjects, 32, flip=False, random_crop=False)[(0, 0)]


def test_the_subject_loss_weight_weights_masked_cells_and_keeps_the_scale():
    from train.losses import denoising_loss

    eps, noise = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    noise[:, :, :4] = 1.0  # errors only in the top half
    top, bottom = torch.zeros(2, 64, 64), torch.zeros(2, 64, 64)
    top[:, :32], bottom[:, 32:] = 1.0, 1.0
    plain = denoising_loss(eps, noise, None, 0.0)
    assert plain == 0.5 and denoising_loss(eps, noise, top, 0.0) == plain
    assert torch.isclose(denoising_loss(eps, noise, torch.ones(2, 64, 64), 5.0), plain)  # uniform: plain MSE
    assert torch.isclose(denoising_loss(eps, noise, top, 3.0), torch.tensor(4 / 5))  # weights 4 vs 1, mean 2.5
    assert torch.isclose(denoising_loss(eps, noise, bottom, 3.0), torch.tensor(1 / 5))
