"""Teacher LoRAs and the weight-space loss: python -m train.teachers fine-tunes one LoRA per training subject, the
trainer reads them (and refuses wrong ones, saying why), and a teacher-only run learns to predict them without
running the UNet."""
import json
import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

import hypernet
from hypernet import PredictedLoRA, to_lora_state_dict
from train import trainer
from train.base_model import FrozenBase
from train.data import scan_subjects, split_held_out
from train.finetune import finetune_lora
from train.state import METADATA_KEY, read_resume
from train.teacher_files import load_teachers, teacher_path
from train.teachers import make_teachers, subject_images

from train_runs import log_records, tiny_config


@pytest.fixture(scope="module")
def base(comfy_root, checkpoints) -> FrozenBase:
    return FrozenBase.load(str(checkpoints["sd15_tiny_clip.safetensors"]), torch.device("cpu"))


@pytest.fixture
def config(tmp_path, data_dir, checkpoints):
    """`tiny_config` with teachers in tmp_path / teachers."""
    return lambda out="run", **overrides: tiny_config(data_dir, checkpoints, tmp_path / out,
                                                      **{"teacher_dir": str(tmp_path / "teachers"), **overrides})


def training_subjects(cfg):
    return split_held_out(scan_subjects(cfg.data_dir, cfg.class_word, cfg.on_bad_image, report=False)[0],
                          cfg.held_out)[0]


def write_random_teachers(cfg, base: FrozenBase, seed: int = 0) -> None:
    """A random rank-2 LoRA of the hypernet's targets per training subject, as the teacher files."""
    targets = hypernet.find_targets(base.diffusion_model)
    generator = torch.Generator().manual_seed(seed)
    for subject in training_subjects(cfg):
        down = {t.name: torch.randn(1, 2, t.in_features, generator=generator) for t in targets}
        up = {t.name: torch.randn(1, t.out_features, 2, generator=generator) * 0.01 for t in targets}
        teacher = PredictedLoRA(targets, down, up, rank=2, alpha=1.0, family="sd15")
        path = teacher_path(cfg.teacher_dir, subject.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        safetensors.torch.save_file(to_lora_state_dict(teacher), str(path))


def test_make_teachers_writes_a_standard_lora_per_training_subject_and_keeps_them_on_a_rerun(config, base):
    import comfy.model_patcher
    import comfy.sd

    cfg = config()
    paths = make_teachers(cfg, steps=3, images=2, base=base)
    subjects = training_subjects(cfg)
    assert [p.name for p in paths] == [f"{s.id}.safetensors" for s in subjects] and len(paths) == 3
    targets = hypernet.find_targets(base.diffusion_model)
    state = safetensors.torch.load_file(str(paths[0]))
    assert len(state) == 3 * len(targets)
    model = comfy.model_patcher.ModelPatcher(base.model, torch.device("cpu"), torch.device("cpu"))
    patched = comfy.sd.load_lora_for_models(model, None, state, 1.0, 0.0)[0]
    assert len(patched.patches) == len(targets)  # ComfyUI's own loader takes every layer of it

    stamps = [p.stat().st_mtime_ns for p in paths]
    assert make_teachers(cfg, steps=3, images=2, base=base) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    with pytest.raises(ValueError, match=r"made with other settings \(steps: file 3, now 4\).*never overwritten"):
        make_teachers(cfg, steps=4, images=2, base=base)
    assert [p.stat().st_mtime_ns for p in paths] == stamps


def test_teachers_of_several_seeds_are_averaged_into_one_lora_of_their_summed_rank(config, base):
    cfg = config()
    paths = make_teachers(cfg, steps=3, images=2, seeds=2, base=base)
    single = make_teachers(config(teacher_dir=str(Path(cfg.teacher_dir).parent / "single"), seed=1), steps=3,
                           images=2, base=base)
    parts = [[teacher_path(Path(cfg.teacher_dir) / f"seed_{seed}", p.stem) for p in paths] for seed in (0, 1)]
    assert [p.read_bytes() for p in parts[1]] == [p.read_bytes() for p in single]  # seed 1 alone, as its own run
    targets = tuple(hypernet.find_targets(base.diffusion_model))
    subjects = training_subjects(cfg)
    averaged = load_teachers(cfg.teacher_dir, subjects, targets, "sd15")
    assert averaged.rank == 2 * cfg.rank
    seed_runs = [load_teachers(str(Path(cfg.teacher_dir) / f"seed_{seed}"), subjects, targets, "sd15")
                 for seed in (0, 1)]
    for k in range(len(subjects)):
        for target in targets:
            mean = (seed_runs[0].delta(target.name, k) + seed_runs[1].delta(target.name, k)) / 2
            torch.testing.assert_close(averaged.delta(target.name, k), mean, rtol=1e-5, atol=1e-7)
        assert not torch.equal(seed_runs[0].delta(targets[0].name, k), seed_runs[1].delta(targets[0].name, k))

    stamps = [p.stat().st_mtime_ns for p in paths]
    assert make_teachers(cfg, steps=3, images=2, seeds=2, base=base) == paths
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    with pytest.raises(ValueError, match=r"made with other settings \(seeds: file 2, now 3\)"):
        make_teachers(cfg, steps=3, images=2, seeds=3, base=base)
    assert not (Path(cfg.teacher_dir) / "seed_2").exists()  # refused before any fine-tuning
    with pytest.raises(ValueError, match=r"made with other settings \(seeds: file 2, now None\)"):
        make_teachers(cfg, steps=3, images=2, base=base)


def test_a_teacher_depends_on_its_images_alone_for_one_seed(config, base):
    cfg = config()
    a, b = (subject_images(s, 2, cfg.image_size, with_masks=False)[:2] for s in training_subjects(cfg)[:2])
    runs = [finetune_lora(base, images, captions, 2, 2.0, (2,), seed=0)[0][1] for images, captions in (a, a, b)]
    name = runs[0].targets[0].name
    assert torch.equal(runs[0].delta(name), runs[1].delta(name))
    assert not torch.allclose(runs[0].delta(name), runs[2].delta(name))


def test_teacher_files_that_are_missing_unsafe_or_for_other_layers_are_refused_naming_the_file(config, base):
    cfg = config()
    write_random_teachers(cfg, base)
    subjects = training_subjects(cfg)
    targets = tuple(hypernet.find_targets(base.diffusion_model))
    loaded = load_teachers(cfg.teacher_dir, subjects, targets, "sd15")
    assert loaded.num_subjects == 3 and loaded.rank == 2

    path = teacher_path(cfg.teacher_dir, subjects[1].id)
    state = safetensors.torch.load_file(str(path))
    stem = hypernet.kohya_stem(targets[0].name)
    cases = {
        "missing": (None, rf"no teacher LoRA .*{subjects[1].id}.safetensors.*python -m train.teachers"),
        "pickle": (b"pickle", r"not a readable .safetensors LoRA"),
        "text encoder": ({**state, "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(2, 4)},
                         r"layers the hypernet does not predict, e.g. 'lora_te_text_model"),
        "other model": ({**state, f"{stem}.lora_down.weight": torch.ones(2, 7)},
                        r"expected \(2, \d+\) and \(\d+, 2\) .*another base model"),
        "incomplete": ({k: v for k, v in state.items() if not k.startswith(stem)}, rf"lacks '{stem}.lora_down"),
        "empty": ({k: torch.zeros_like(v) if "lora_up" in k else v for k, v in state.items()}, r"empty LoRA"),
    }
    for name, (content, message) in cases.items():
        path.unlink()
        if content == b"pickle":
            path.write_bytes(pickle.dumps(state))
        elif content is not None:
            safetensors.torch.save_file(content, str(path))
        with pytest.raises(ValueError, match=message):
            load_teachers(cfg.teacher_dir, subjects, targets, "sd15")
        path.unlink(missing_ok=True)
        safetensors.torch.save_file(state, str(path))


def test_a_teacher_only_run_learns_the_teachers_without_running_the_unet_then_resumes_with_the_denoising_loss(
        config, base):
    first = config(denoising_weight=0.0, teacher_weight=1.0, max_steps=130, stop_at=120, batch_size=3, lr=3e-3)
    write_random_teachers(first, base)
    calls = []
    hook = base.diffusion_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        trainer.train(first, base=base)
    finally:
        hook.remove()
    assert calls == []
    records = log_records(first)
    assert records[-1]["step"] == 120 and all(r["mse"] == 0 for r in records)
    assert records[-1]["teacher"] < 0.8 * records[0]["teacher"], (records[0], records[-1])

    net, _ = hypernet.load(str(Path(first.out_dir) / "hypernet.safetensors"))
    subjects = training_subjects(first)
    reference = torch.stack([subject_images(s, 1, first.image_size, False)[0][0] for s in subjects])
    with torch.no_grad():
        predicted = trainer.SubjectToLoRA(net)(reference)
    teachers = load_teachers(first.teacher_dir, subjects, net.config.targets, "sd15")
    distances = torch.stack([hypernet.relative_distance(predicted, teachers.select(torch.full((3,), j)))
                             for j in range(3)], dim=1)  # [prediction, teacher]
    for i in range(3):  # each subject's prediction is nearest its own teacher
        assert distances[i, i] < distances[i].masked_fill(torch.eye(3, dtype=torch.bool)[i], 9).min(), distances

    second = config(denoising_weight=1.0, teacher_weight=1.0, max_steps=130, batch_size=3, lr=3e-3, resume=True)
    trainer.train(second, base=base)
    resumed = [r for r in log_records(second) if r["step"] > 120]
    assert [r["step"] for r in resumed] == list(range(121, 131)) and all(r["mse"] > 0 for r in resumed)
    assert read_resume(str(Path(second.out_dir) / "resume.safetensors"))[0]["step"] == 130


def test_a_run_written_before_the_teacher_fields_existed_resumes(config, base):
    cfg = config(max_steps=2, stop_at=1, teacher_dir="")
    trainer.train(cfg, base=base)
    path = Path(cfg.out_dir) / "resume.safetensors"
    document, tensors = read_resume(str(path))
    for name in ("denoising_weight", "teacher_weight", "teacher_dir"):
        del document["config"][name]
    safetensors.torch.save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(document)})
    assert trainer.train(config(max_steps=2, teacher_dir="", resume=True), base=base)["step"] == 2


def test_a_config_with_nothing_to_train_on_or_teachers_without_a_folder_is_refused(config):
    with pytest.raises(ValueError, match="both 0: nothing to train on"):
        config(denoising_weight=0.0)
    with pytest.raises(ValueError, match="teacher_weight > 0 needs teacher_dir"):
        config(teacher_weight=1.0, teacher_dir="")
