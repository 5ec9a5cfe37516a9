"""The trainer end to end on the tiny SD1.5-family checkpoint: it learns, regularizes, resumes exactly, runs under
torchrun, stops on NaN, survives corrupt images, and writes checkpoints that the nodes accept."""
import contextlib
import copy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import hypernet
from train import trainer
from train.base_model import FrozenBase
from train.config import TrainConfig
from train.data import BadImageError
from train.state import read_resume

from train_runs import REPO, SUBPROCESS_ENV, command_line, fixed_batch, log_records, losses_on, tiny_config


@pytest.fixture(scope="module")
def base(comfy_root, checkpoints) -> FrozenBase:
    return FrozenBase.load(str(checkpoints["sd15_tiny_clip.safetensors"]), torch.device("cpu"))


@pytest.fixture
def config(tmp_path, data_dir, checkpoints):
    """`tiny_config` in tmp_path / out."""
    return lambda out="run", **overrides: tiny_config(data_dir, checkpoints, tmp_path / out, **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir, checkpoints, base):
    """One 20-step run at a high learning rate, with a checkpoint every 10 steps and a sample grid at the end."""
    cfg = tiny_config(data_dir, checkpoints, tmp_path_factory.mktemp("trained"), max_steps=20, ckpt_every=10,
                      sample_every=20)
    trainer.train(cfg, base=base)
    return cfg


def test_training_lowers_the_denoising_loss_on_a_fixed_batch_with_fixed_noise_and_timesteps(trained, base):
    batch = fixed_batch(trained)
    untrained = trainer.build_hypernet(trained, base, None)  # the run's initial weights (seeded)
    net, _ = hypernet.load(str(Path(trained.out_dir) / "hypernet.safetensors"))
    before, after = losses_on(untrained, base, batch)[0], losses_on(net, base, batch)[0]
    assert after < 0.85 * before, f"denoising loss {before:.4f} → {after:.4f} after 20 steps"


def test_each_step_logs_the_denoising_and_regularization_terms_separately(trained):
    records = log_records(trained)
    assert [r["step"] for r in records] == list(range(1, 21))
    for r in records:
        assert r["loss"] == pytest.approx(r["mse"] + trained.reg_lambda * r["reg"])
        assert r["lr"] > 0 and r["samples_per_s"] > 0 and np.isfinite(r["grad_norm"])
    assert records[0]["reg"] == 0.0 < records[-1]["reg"]  # an untrained net predicts ΔW = 0
    _, metadata = hypernet.load(str(Path(trained.out_dir) / "hypernet.safetensors"))
    assert metadata["training"]["step"] == 20 and TrainConfig.from_dict(metadata["training"]["config"]) == trained


def test_the_sample_grid_shows_reference_base_personalized_and_hm_cfg_images_per_held_out_subject(trained):
    grid = np.asarray(Image.open(Path(trained.out_dir) / "samples" / "step_0000020.png")).astype(int)
    assert grid.shape == (64, 4 * 64, 3)  # one held-out subject: reference | base | personalized | HM-CFG
    reference = np.asarray(Image.open(Path(trained.data_dir) / "subject_3" / "0.png"))
    assert np.abs(grid[:, :64] - reference).max() <= 1
    base, personalized, hm_cfg = grid[:, 64:128], grid[:, 128:192], grid[:, 192:]
    assert np.abs(base - personalized).mean() > 1  # the predicted LoRA changes the sample
    assert np.abs(hm_cfg - personalized).mean() > 1 and np.abs(hm_cfg - base).mean() > 1


def test_a_trained_checkpoint_is_loaded_encoded_predicted_and_applied_by_the_nodes(trained, pack, sd15, tmp_path):
    import comfy.samplers
    import folder_paths
    from bench.harness.node_harness import conditioning, one_step_denoised, run

    folder = tmp_path / "hypersubject"
    folder.mkdir()
    shutil.copy(Path(trained.out_dir) / "hypernet.safetensors", folder / "trained_by_test_train_run.safetensors")
    folder_paths.add_model_folder_path("hypersubject", str(folder))
    image = fixed_batch(trained)["reference"][:1]

    (loaded,) = run(pack["HyperSubjectLoader"], hypernet_name="trained_by_test_train_run.safetensors")
    embeds, _ = run(pack["HyperSubjectEncode"], hypernet=loaded, image=image, combine="mean", on_bad_input="error")
    (lora,) = run(pack["HyperSubjectPredictLoRA"], hypernet=loaded, subject=embeds)
    net, _ = hypernet.load(str(Path(trained.out_dir) / "hypernet.safetensors"))
    with torch.no_grad():
        expected = net(net.encode(image))
    for target in expected.targets:
        assert torch.allclose(lora.lora.delta(target.name), expected.delta(target.name), atol=1e-6)
        assert expected.delta(target.name).abs().max() > 0

    model = sd15[0]
    (personalized,) = run(pack["HyperSubjectApplyLoRA"], model=model, subject_lora=lora, strength=1.0)
    assert {k for k in personalized.patches} == {t.weight_key for t in expected.targets}

    def denoised(patched):
        guider = comfy.samplers.CFGGuider(patched)
        cond = conditioning(sd15[1], "a toy")
        guider.set_conds(cond, cond)
        guider.set_cfg(1.0)
        return one_step_denoised(guider, sigma=1.0)

    assert (denoised(personalized) - denoised(model)).abs().max() > 1e-4


def test_a_regularized_run_predicts_weights_of_smaller_norm_than_an_unregularized_one(config, base):
    norms = {}
    for reg_lambda in (0.0, 1.0):
        cfg = config(out=f"reg_{reg_lambda}", reg_lambda=reg_lambda, max_steps=6, batch_size=2)
        trainer.train(cfg, base=base)
        net, _ = hypernet.load(str(Path(cfg.out_dir) / "hypernet.safetensors"))
        norms[reg_lambda] = losses_on(net, base, fixed_batch(cfg))[1]
    assert 0 < norms[1.0] < 0.01 * norms[0.0], norms


def test_a_subject_weighted_run_trains_on_masked_data_and_a_run_without_masks_is_refused(tmp_path, checkpoints,
                                                                                          base, data_dir):
    from test_train_data import write_masks, write_subjects

    masked = write_subjects(tmp_path / "masked")
    write_masks(masked)
    cfg = tiny_config(masked, checkpoints, tmp_path / "weighted", subject_loss_weight=4.0, max_steps=3, batch_size=2)
    trainer.train(cfg, base=base)
    records = [r for r in log_records(cfg) if "mse" in r]
    assert len(records) == 3 and all(np.isfinite(r["mse"]) for r in records)
    unmasked = tiny_config(data_dir, checkpoints, tmp_path / "unmasked", subject_loss_weight=4.0, max_steps=3)
    with pytest.raises(ValueError, match="training images have no mask.*or set subject_loss_weight = 0"):
        trainer.train(unmasked, base=base)


def test_stopping_and_resuming_gives_exactly_the_weights_and_optimizer_state_of_an_uninterrupted_run(config, base):
    steps = dict(max_steps=6, ckpt_every=2, ema_decay=0.5, lr=1e-3, warmup_steps=2, batch_size=2)
    straight = config(out="straight", **steps)
    trainer.train(straight, base=base)
    interrupted = config(out="interrupted", stop_at=3, **steps)
    assert trainer.train(interrupted, base=base)["step"] == 3
    assert trainer.train(config(out="interrupted", resume=True, **steps), base=base)["step"] == 6

    expected = safetensors.torch.load_file(str(Path(straight.out_dir) / "resume.safetensors"))
    got = safetensors.torch.load_file(str(Path(interrupted.out_dir) / "resume.safetensors"))
    compared = [k for k in expected if not k.startswith("rng/")]  # the loop draws nothing from the global RNGs
    assert set(compared) == {k for k in got if not k.startswith("rng/")}
    assert any(k.startswith("optimizer/") for k in compared) and any(k.startswith("ema/") for k in compared)
    for key in compared:
        assert torch.equal(got[key], expected[key]), key  # measured: bit-identical on the CPU
    assert [r["loss"] for r in log_records(interrupted)] == [r["loss"] for r in log_records(straight)]


def test_a_run_refuses_to_overwrite_an_earlier_run_or_to_resume_with_another_config(config, base):
    cfg = config(max_steps=1)
    trainer.train(cfg, base=base)
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        trainer.train(cfg, base=base)
    with pytest.raises(ValueError, match=r"different config \(rank: run 4, now 8\)"):
        trainer.train(config(max_steps=1, rank=8, resume=True), base=base)


def test_a_run_starts_from_an_exported_hypernets_weights_and_refuses_one_of_another_architecture(trained, config,
                                                                                                   base):
    exported = Path(trained.out_dir) / "hypernet.safetensors"
    cfg = config(init_from=str(exported), max_steps=1, lr=1e-12)  # one step that cannot move the weights visibly
    trainer.train(cfg, base=base)
    start, _ = hypernet.load(str(exported))
    second, _ = hypernet.load(str(Path(cfg.out_dir) / "hypernet.safetensors"))
    fresh = trainer.build_hypernet(cfg, base, None)
    for name, weight in second.state_dict().items():
        torch.testing.assert_close(weight, start.state_dict()[name], rtol=0, atol=1e-9, msg=name)
    assert any(not torch.allclose(w, fresh.state_dict()[n]) for n, w in second.state_dict().items())
    with pytest.raises(ValueError, match=r"init_from .* another architecture \(d_model: file 32, config 64\)"):
        trainer.train(config(out="wider", init_from=str(exported), d_model=64, max_steps=1), base=base)


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_config_and_keeps_the_last_good_checkpoint(config, base):
    cfg = config(lr=1e30, ckpt_every=1, max_steps=5, grad_clip=0.0)
    with pytest.raises(trainer.TrainingDiverged, match="at step 2 of the run configured by nan.toml.*the checkpoint "
                                                       "of step 1 is kept"):
        trainer.train(cfg, source="nan.toml", base=base)
    _, metadata = hypernet.load(str(Path(cfg.out_dir) / "hypernet.safetensors"))
    assert metadata["training"]["step"] == 1 and np.isfinite(metadata["training"]["loss"])


def test_gradient_checkpointing_gives_the_same_hypernet_gradients_and_keeps_fewer_activations(config, base):
    cfg = config()
    batch = fixed_batch(cfg)
    checkpointed = copy.copy(base)  # the same VAE and CLIP, its own UNet: enabling checkpointing changes the UNet
    checkpointed.diffusion_model = copy.deepcopy(base.diffusion_model)
    checkpointed.enable_grad_checkpointing()
    grads, kept = [], []
    for frozen in (base, checkpointed):
        net = trainer.build_hypernet(cfg, frozen, None)
        with torch.no_grad():
            for head in net.decoder.heads.values():
                head.weight.normal_(std=0.02)  # non-zero up heads, so every factor gets a gradient
        saved = []
        with contextlib.ExitStack() as stack:
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.nbytes) or t, lambda t: t):
                losses = stack.enter_context(trainer.batch_losses(trainer.SubjectToLoRA(net), frozen, batch))
            (losses["mse"] + losses["reg"]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        kept.append(sum(saved))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert kept[1] < 0.5 * kept[0], f"activations kept for backward: {kept[0]} → {kept[1]} bytes"


def test_a_corrupt_image_is_reported_and_skipped_or_stops_the_run_naming_the_file(base, data_dir, checkpoints,
                                                                               tmp_path, caplog):
    corrupted = tmp_path / "corrupted"
    shutil.copytree(data_dir, corrupted)
    bad = corrupted / "subject_0" / "broken.png"
    bad.write_bytes(np.random.default_rng(1).bytes(4096))
    cfg = tiny_config(corrupted, checkpoints, tmp_path / "skip", max_steps=1)
    with caplog.at_level("WARNING", logger="train.data"):
        assert trainer.train(cfg, base=base)["step"] == 1
    assert f"skipping unreadable image {bad}" in caplog.text
    _, metadata = hypernet.load(str(Path(cfg.out_dir) / "hypernet.safetensors"))
    assert metadata["training"]["skipped_images"] == 1
    with pytest.raises(BadImageError, match=f"cannot read the image {bad}"):
        trainer.train(tiny_config(corrupted, checkpoints, tmp_path / "stop", on_bad_image="stop"), base=base)


def test_torchrun_with_two_cpu_processes_follows_the_loss_curve_of_one_process_with_the_same_global_batch(
        config, base):
    single = config(out="single", max_steps=3, batch_size=4, grad_accum=2)
    trainer.train(single, base=base)
    ddp = config(out="ddp", max_steps=3, batch_size=2, grad_accum=2)  # 2 per rank × 2 ranks × 2 micro-batches = 8
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "train", *command_line(ddp)], cwd=REPO, env=SUBPROCESS_ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    expected, got = log_records(single), log_records(ddp)
    assert [r["step"] for r in got] == [1, 2, 3]  # rank 0 alone writes the log
    for name in ("mse", "reg"):
        # measured: ≤ 4e-7 relative (the summation order differs between one batch of 4 and two of 2)
        assert np.allclose([r[name] for r in got], [r[name] for r in expected], rtol=1e-5, atol=1e-7), name
    single_net, _ = hypernet.load(str(Path(single.out_dir) / "hypernet.safetensors"))
    ddp_net, _ = hypernet.load(str(Path(ddp.out_dir) / "hypernet.safetensors"))
    for (name, a), b in zip(single_net.state_dict().items(), ddp_net.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-3, atol=5e-5), name  # measured: ≤ 1.3e-5 after 3 Adam steps


def test_a_killed_run_resumes_from_its_last_checkpoint_and_repeats_the_lost_steps_exactly(config, base):
    cfg = config(out="killed", max_steps=1000, ckpt_every=3, lr=1e-3)
    log = Path(cfg.out_dir) / "log.jsonl"
    output = Path(cfg.out_dir).parent / "killed.stderr"
    with open(output, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "train", *command_line(cfg)], cwd=REPO,
                                   env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 240
    while not (log.exists() and len(log.read_text().splitlines()) >= 7):
        assert process.poll() is None, output.read_text()[-3000:]
        assert time.monotonic() < deadline, "the run logged fewer than 7 steps in 240 s"
        time.sleep(0.02)
    process.kill()  # SIGKILL: no handler runs; maybe in the middle of a step or a checkpoint write
    process.wait()
    lost = log_records(cfg)
    last = lost[-1]["step"]
    checkpoint, _ = read_resume(str(Path(cfg.out_dir) / "resume.safetensors"))
    assert checkpoint["step"] % 3 == 0 and last - 3 <= checkpoint["step"] <= last, (checkpoint["step"], last)
    resumed = trainer.train(config(out="killed", max_steps=1000, ckpt_every=3, lr=1e-3, resume=True,
                                   stop_at=last + 1), base=base)
    again = {r["step"]: r for r in log_records(cfg)}
    assert resumed["step"] == last + 1 and sorted(again) == list(range(1, last + 2))
    for record in lost:
        assert again[record["step"]]["loss"] == pytest.approx(record["loss"], rel=1e-6)


@pytest.mark.slow
def test_a_hypernet_reading_clip_vision_tokens_trains_and_records_its_encoder(config, base):
    from bench.harness.tiny_files import tiny_clip_vision

    cfg = config(encoder="clip_vision", clip_vision=str(tiny_clip_vision()), max_steps=2, batch_size=1)
    record = trainer.train(cfg, base=base)
    assert record["step"] == 2 and np.isfinite(record["loss"]) and record["reg"] > 0
    net, metadata = hypernet.load(str(Path(cfg.out_dir) / "hypernet.safetensors"))
    assert net.encoder is None and net.config.encoder.to_dict() == {
        "kind": "clip_vision", "image_size": 224, "token_dim": 1024, "clip_vision_size": "vit-l-14", "width": 64}
