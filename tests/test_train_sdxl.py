"""The trainer on an SDXL-family base: a tiny SDXL-architecture model (ComfyUI's SDXL class, the real SDXL text
encoders with random weights) predicts what ComfyUI's own sampling path predicts, and a short run learns and writes
an 'sdxl' hypernet whose LoRA the nodes apply and HM-CFG mixes as its formula says."""
from pathlib import Path

import pytest
import torch

import hypernet
from bench.tiny_checkpoints import tiny_sdxl
from train import trainer
from train.base_model import EncodedText, FrozenBase

from bench.harness.node_harness import conditioning, one_step_denoised, run
from train_runs import fixed_batch, losses_on, tiny_config


@pytest.fixture(scope="module")
def sdxl_base(comfy_root) -> FrozenBase:
    return FrozenBase(*tiny_sdxl(seed=0), torch.device("cpu"), source="the tiny SDXL model")


@pytest.fixture(scope="module")
def sdxl_run(sdxl_base, data_dir, checkpoints, tmp_path_factory):
    """10 steps on the tiny SDXL base; the run's config."""
    cfg = tiny_config(data_dir, checkpoints, tmp_path_factory.mktemp("sdxl_run"), max_steps=10, base_checkpoint="")
    trainer.train(cfg, base=sdxl_base)
    return cfg


def comfy_denoised(base: FrozenBase, x: torch.Tensor, sigma: torch.Tensor, prompt: str) -> torch.Tensor:
    """x0 predicted by ComfyUI's sampling path: CLIPTextEncode → model conditions (ADM from the noise's size) →
    apply_model."""
    import comfy.sampler_helpers
    import comfy.samplers
    import nodes

    conditioning = nodes.CLIPTextEncode().encode(base.clip, prompt)[0]
    conds = comfy.sampler_helpers.convert_cond(conditioning)
    comfy.samplers.encode_model_conds(base.model.extra_conds, conds, x, x.device, "positive")
    model_conds = conds[0]["model_conds"]
    return base.model.apply_model(x, sigma, c_crossattn=model_conds["c_crossattn"].cond, y=model_conds["y"].cond)


@torch.no_grad()
def test_the_sdxl_unet_gets_what_comfyuis_sampler_gives_it_pooled_text_and_image_size(sdxl_base):
    for latent_side in (8, 12):
        x = torch.randn(1, 4, latent_side, latent_side) * 3.0
        sigma = torch.tensor([3.0])
        text = sdxl_base.encode_text(["a toy on a blue background"])
        assert text.context.shape == (1, 77, 2048) and text.pooled.shape == (1, 1280)
        ours = x - sigma * sdxl_base.predict(x, sigma, text)
        torch.testing.assert_close(ours, comfy_denoised(sdxl_base, x, sigma, "a toy on a blue background"),
                                   rtol=1e-5, atol=1e-5)
        other_pooled = EncodedText(text.context, sdxl_base.encode_text(["a red toy"]).pooled)
        assert not torch.allclose(sdxl_base.predict(x, sigma, other_pooled),
                                  sdxl_base.predict(x, sigma, text), atol=1e-6)


def test_a_short_run_on_the_sdxl_base_lowers_the_loss_and_writes_an_sdxl_hypernet(sdxl_base, sdxl_run):
    untrained = trainer.build_hypernet(sdxl_run, sdxl_base, None)
    net, _ = hypernet.load(str(Path(sdxl_run.out_dir) / "hypernet.safetensors"))
    batch = fixed_batch(sdxl_run)
    before, after = losses_on(untrained, sdxl_base, batch)[0], losses_on(net, sdxl_base, batch)[0]
    assert after < 0.9 * before, f"denoising loss {before:.4f} → {after:.4f} after 10 steps"
    assert net.config.family == "sdxl"
    cross_keys = [t for t in net.config.targets if t.name.endswith("attn2.to_k")]
    assert cross_keys and all(t.in_features == 2048 for t in cross_keys)


def test_the_nodes_apply_the_sdxl_lora_and_hm_cfg_follows_its_formula_in_two_rows_at_s_text_one(sdxl_base, sdxl_run,
                                                                                                 pack):
    import comfy.model_patcher
    import comfy.samplers
    import folder_paths

    folder_paths.add_model_folder_path("hypersubject", sdxl_run.out_dir)
    base = comfy.model_patcher.ModelPatcher(sdxl_base.model, torch.device("cpu"), torch.device("cpu"))
    (net,) = run(pack["HyperSubjectLoader"], hypernet_name="hypernet.safetensors")
    embeds, _ = run(pack["HyperSubjectEncode"], hypernet=net, image=fixed_batch(sdxl_run)["reference"][:1],
                    combine="mean", on_bad_input="error")
    (lora,) = run(pack["HyperSubjectPredictLoRA"], hypernet=net, subject=embeds)
    (personalized,) = run(pack["HyperSubjectApplyLoRA"], model=base, subject_lora=lora, strength=1.0)
    positive, negative = conditioning(sdxl_base.clip, "a toy"), conditioning(sdxl_base.clip, "")

    def alone(model, cond):
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(cond, cond)
        guider.set_cfg(1.0)
        return one_step_denoised(guider, 2.0)

    u, c, p = alone(base, negative), alone(base, positive), alone(personalized, positive)
    (guider,) = run(pack["HMCFGGuider"], base_model=base, personalized_model=personalized, positive=positive,
                    negative=negative, s_text=4.0, s_subject=2.0, start_percent=0.0, end_percent=1.0)
    assert guider.fast, "Apply Predicted LoRA's output should take the per-sample fast path"
    assert (p - c).abs().max() > 1e-4, "the LoRA must change the prediction for this test to mean anything"
    expected = u + 4.0 * (c - u) + 2.0 * (p - c)
    assert (one_step_denoised(guider, 2.0) - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())
    (cfg1,) = run(pack["HMCFGGuider"], base_model=base, personalized_model=personalized, positive=positive,
                  negative=negative, s_text=1.0, s_subject=2.0, start_percent=0.0, end_percent=1.0)
    rows = []
    handle = sdxl_base.diffusion_model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        got = one_step_denoised(cfg1, 2.0)
    finally:
        handle.remove()
    assert rows == [2]  # s_text 1: [cond, personalized cond], the unconditional never evaluated
    expected = c + 2.0 * (p - c)
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max())
