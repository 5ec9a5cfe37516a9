"""The trainer on an SDXL-family base: a tiny SDXL-architecture model (ComfyUI's SDXL class, the real SDXL text
encoders with random weights) predicts what ComfyUI's own sampling path predicts, and a short run learns and writes
an 'sdxl' hypernet that the nodes' per-sample LoRA accepts."""
from pathlib import Path

import pytest
import torch

import hypernet
from bench.tiny_checkpoints import tiny_sdxl
from train import trainer
from train.base_model import EncodedText, FrozenBase

from train_runs import fixed_batch, losses_on, tiny_config


@pytest.fixture(scope="module")
def sdxl_base(comfy_root) -> FrozenBase:
    return FrozenBase(*tiny_sdxl(seed=0), torch.device("cpu"), source="the tiny SDXL model")


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
        ours = x - sigma * sdxl_base.predict_noise(x, sigma, text)
        torch.testing.assert_close(ours, comfy_denoised(sdxl_base, x, sigma, "a toy on a blue background"),
                                   rtol=1e-5, atol=1e-5)
        other_pooled = EncodedText(text.context, sdxl_base.encode_text(["a red toy"]).pooled)
        assert not torch.allclose(sdxl_base.predict_noise(x, sigma, other_pooled),
                                  sdxl_base.predict_noise(x, sigma, text), atol=1e-6)


def test_a_short_run_on_the_sdxl_base_lowers_the_loss_and_writes_an_sdxl_hypernet(sdxl_base, data_dir, checkpoints,
                                                                                   tmp_path):
    cfg = tiny_config(data_dir, checkpoints, tmp_path / "run", max_steps=10, base_checkpoint="")
    untrained = trainer.build_hypernet(cfg, sdxl_base, None)
    trainer.train(cfg, base=sdxl_base)
    net, _ = hypernet.load(str(Path(cfg.out_dir) / "hypernet.safetensors"))
    batch = fixed_batch(cfg)
    before, after = losses_on(untrained, sdxl_base, batch)[0], losses_on(net, sdxl_base, batch)[0]
    assert after < 0.9 * before, f"denoising loss {before:.4f} → {after:.4f} after 10 steps"

    assert net.config.family == "sdxl"
    cross_keys = [t for t in net.config.targets if t.name.endswith("attn2.to_k")]
    assert cross_keys and all(t.in_features == 2048 for t in cross_keys)
    with torch.no_grad():
        lora = net(net.encode(batch["reference"][:1]))
        with hypernet.PerSampleLoRA(sdxl_base.diffusion_model, lora):
            personalized = sdxl_base.predict_noise(torch.randn(1, 4, 8, 8), torch.tensor([2.0]),
                                                   sdxl_base.encode_text(["a toy"]))
    assert personalized.isfinite().all()
