"""The trainer on a Flux base (the tiny real Flux.1-dev model, its 16-channel VAE and cached CLIP-L captions):
ComfyUI's own rectified-flow prediction, the loss falls, resume is bit-identical, the nodes take the export."""
import shutil
from pathlib import Path

import pytest
import torch

import hypernet
from bench.harness.node_harness import model_folder, predicted_lora, run
from train import text_cache, trainer
from train.base_model import FrozenBase

from train_runs import fixed_batch, losses_on, tiny_config

pytestmark = pytest.mark.slow  # a 533M-parameter transformer, trained on the CPU


@pytest.fixture(scope="module")
def flux_files(comfy_root):
    from bench.harness.tiny_files import tiny_flux

    return tiny_flux()


@pytest.fixture(scope="module")
def flux_config(tmp_path_factory, data_dir, flux_files, checkpoints):
    """`tiny_config` on the Flux base, its captions encoded once into a text cache by the CLI."""
    cache = tmp_path_factory.mktemp("text_cache") / "captions.safetensors"

    def config(out_dir: Path, **overrides):
        return tiny_config(data_dir, checkpoints, out_dir, base_checkpoint=str(flux_files["model"]),
                           base_vae=str(flux_files["vae"]), text_cache=str(cache), batch_size=2, lr=1e-4,
                           **overrides)

    text_cache.main(["--data_dir", str(data_dir), "--text_cache", str(cache), "--text_encoder",
                     str(flux_files["clip_l"]), "--type", "stable_diffusion"])
    return config


@pytest.fixture(scope="module")
def flux_base(flux_config, tmp_path_factory) -> FrozenBase:
    cfg = flux_config(tmp_path_factory.mktemp("unused"))
    return FrozenBase.load(cfg.base_checkpoint, torch.device("cpu"), vae=cfg.base_vae, text_cache=cfg.text_cache)


def test_the_text_cache_holds_every_caption_and_the_empty_one_and_refuses_others(flux_config, flux_base, tmp_path):
    cfg = flux_config(tmp_path)
    encoded = text_cache.read(cfg.text_cache)
    assert set(encoded) == set(text_cache.captions_of(cfg)) and "" in encoded
    assert all(c.shape == (1, 77, 768) and p.shape == (1, 768) for c, p in encoded.values())
    with pytest.raises(ValueError, match="'a caption nobody encoded' is not in the text cache .*python -m "
                                         "train.text_cache"):
        flux_base.encode_text(["a caption nobody encoded"])


def test_a_file_that_is_not_a_text_cache_or_a_diffusion_model_is_refused_naming_it_and_the_fix(flux_files, tmp_path):
    with pytest.raises(ValueError, match=r"flux_tiny_vae.safetensors is not a HyperSubject text cache \(format None, "
                                         r"expected 'hypersubject.text_cache.v1'\): make it with python -m "
                                         r"train.text_cache"):
        text_cache.read(str(flux_files["vae"]))
    with pytest.raises(ValueError, match="flux_tiny_vae.safetensors is not a diffusion model ComfyUI recognises: with "
                                         "base_vae it must be a diffusion model alone"):
        FrozenBase.load(str(flux_files["vae"]), torch.device("cpu"), vae=str(flux_files["vae"]))


@torch.no_grad()
def test_the_prediction_is_comfyuis_own_flux_velocity_with_its_pooled_text_and_guidance(flux_base):
    import comfy.sampler_helpers
    import comfy.samplers

    text = flux_base.encode_text(["a toy"])
    x, sigma = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.6])
    ours = x - sigma * flux_base.predict(x, sigma, text)
    # what ComfyUI's samplers give the model for CLIPTextEncode's output without FluxGuidance
    conds = comfy.sampler_helpers.convert_cond([[text.context, {"pooled_output": text.pooled}]])
    comfy.samplers.encode_model_conds(flux_base.model.extra_conds, conds, x, x.device, "positive")
    inputs = {name: cond.cond for name, cond in conds[0]["model_conds"].items()}
    assert sorted(inputs) == ["c_crossattn", "guidance", "y"]
    torch.testing.assert_close(ours, flux_base.model.apply_model(x, sigma, **inputs), rtol=1e-5, atol=1e-5)
    assert torch.equal(flux_base.target(x, torch.ones_like(x)), x - 1)  # the velocity ε − x0


@pytest.fixture(scope="module")
def flux_trained(flux_config, flux_base, tmp_path_factory):
    cfg = flux_config(tmp_path_factory.mktemp("flux_trained"), max_steps=4, ckpt_every=2)
    trainer.train(cfg, base=flux_base)
    return cfg


def test_training_on_flux_lowers_the_loss_on_a_fixed_batch(flux_trained, flux_base):
    batch = fixed_batch(flux_trained)
    untrained = trainer.build_hypernet(flux_trained, flux_base, None)
    net, _ = hypernet.load(str(Path(flux_trained.out_dir) / "hypernet.safetensors"))
    assert net.config.family == "flux" and len(net.config.targets) == 6
    before, after = losses_on(untrained, flux_base, batch)[0], losses_on(net, flux_base, batch)[0]
    assert after < 0.95 * before, f"flow-matching loss {before:.4f} → {after:.4f} after 4 steps"


def test_a_resumed_flux_run_is_bit_identical_to_an_uninterrupted_one(flux_trained, flux_config, flux_base, tmp_path):
    resumed = flux_config(tmp_path / "resumed", max_steps=4, ckpt_every=2, stop_at=2)
    trainer.train(resumed, base=flux_base)
    trainer.train(flux_config(tmp_path / "resumed", max_steps=4, ckpt_every=2, resume=True), base=flux_base)
    straight, _ = hypernet.load(str(Path(flux_trained.out_dir) / "hypernet.safetensors"))
    again, _ = hypernet.load(str(tmp_path / "resumed" / "hypernet.safetensors"))
    for name, weight in straight.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), name


def test_the_exported_flux_hypernet_patches_every_target_of_the_stock_loaded_model(flux_trained, flux_files, pack,
                                                                                   tmp_path):
    import nodes

    with model_folder("diffusion_models", flux_files["model"].parent):
        (model,) = nodes.UNETLoader().load_unet(flux_files["model"].name, "default")
    with model_folder("hypersubject", tmp_path):
        shutil.copy(Path(flux_trained.out_dir) / "hypernet.safetensors", tmp_path / "flux_trained.safetensors")
        lora = predicted_lora(pack, "flux_trained.safetensors")
    (personalized,) = run(pack["HyperSubjectApplyLoRA"], model=model, subject_lora=lora, strength=1.0)
    assert len(lora.lora.targets) == 6
    assert sorted(personalized.patches) == sorted(t.weight_key for t in lora.lora.targets)


def test_gradient_checkpointing_on_flux_gives_the_same_gradients(flux_config, flux_base, tmp_path):
    cfg = flux_config(tmp_path)
    checkpointed = FrozenBase.load(cfg.base_checkpoint, torch.device("cpu"), vae=cfg.base_vae,
                                   text_cache=cfg.text_cache)
    checkpointed.enable_grad_checkpointing()
    blocks = (*checkpointed.diffusion_model.double_blocks, *checkpointed.diffusion_model.single_blocks)
    assert all("forward" in vars(block) for block in blocks)  # each block runs under torch.utils.checkpoint
    batch = {key: value[:2] for key, value in fixed_batch(cfg).items()}
    net = trainer.build_hypernet(cfg, flux_base, None)
    gradients = []
    for base in (flux_base, checkpointed):
        net.zero_grad()
        with trainer.batch_losses(trainer.SubjectToLoRA(net), base, batch) as losses:
            losses["mse"].backward()
        gradients.append({name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None})
    assert gradients[0].keys() == gradients[1].keys() and any(g.abs().max() > 0 for g in gradients[0].values())
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, rtol=1e-4, atol=1e-6, msg=name)
