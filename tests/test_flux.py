"""Flux.1 on the tiny real Flux model (one double and one single block at Flux's width, loaded by UNETLoader): family
and targets, Apply and Save Predicted LoRA against the stock LoraLoader, HM-CFG against its formula at cfg 1."""
import comfy.ldm.flux.model
import comfy.ops
import node_helpers
import nodes
import pytest
import torch

from bench.harness.node_harness import conditioning, model_folder, one_step_denoised, predicted_lora, run
from bench.tiny_checkpoints import FLUX_TINY
from hypernet import count_parameters, family_targets
from test_nodes_hmcfg import single_model_prediction

pytestmark = pytest.mark.slow  # a 533M-parameter model
LATENT = (1, 16, 8, 8)  # 64 px: 16 image tokens
# Flux.1-dev's own layout: 19 double and 38 single blocks, a T5-XXL text input (built on the meta device only)
FLUX_DEV = dict(FLUX_TINY, context_in_dim=4096, depth=19, depth_single_blocks=38)


@pytest.fixture(scope="module")
def flux(comfy_root, hypernet_files):
    """The tiny Flux MODEL through the stock UNETLoader (its hypernet: tiny_flux.safetensors)."""
    from bench.harness.tiny_files import tiny_flux

    path = tiny_flux()["model"]
    with model_folder("diffusion_models", path.parent):
        (model,) = nodes.UNETLoader().load_unet(path.name, "default")
    return model


@pytest.fixture(scope="module")
def prompts(sd15):
    """A prompt and an empty one from a CLIP-L (the tiny Flux reads 768-d text), with Flux's guidance input."""
    def flux_conditioning(text: str):
        return node_helpers.conditioning_set_values(conditioning(sd15[1], text), {"guidance": 3.5})

    return flux_conditioning("a toy on a blue background"), flux_conditioning("")


@pytest.fixture(scope="module")
def flux_lora(pack, flux):
    return predicted_lora(pack, "tiny_flux.safetensors")


def flux_prediction(model, cond, sigma: float = 0.7):
    return single_model_prediction(model, cond, sigma, shape=LATENT)


def test_the_stock_loaded_flux_model_is_the_flux_family_with_its_attention_and_single_block_targets(flux):
    family, targets = family_targets(flux.model.diffusion_model)
    assert type(flux.model).__name__ == "Flux" and family == "flux"
    assert [(t.name.removeprefix("diffusion_model."), t.in_features, t.out_features) for t in targets] == [
        ("double_blocks.0.img_attn.qkv", 3072, 9216), ("double_blocks.0.img_attn.proj", 3072, 3072),
        ("double_blocks.0.txt_attn.qkv", 3072, 9216), ("double_blocks.0.txt_attn.proj", 3072, 3072),
        ("single_blocks.0.linear1", 3072, 21504), ("single_blocks.0.linear2", 15360, 3072)]


def test_flux_dev_has_152_targets_and_the_decoder_stays_small_at_rank_4_and_16():
    from hypernet import EncoderSpec, HyperNetConfig

    with torch.device("meta"):
        dev = comfy.ldm.flux.model.Flux(**FLUX_DEV, operations=comfy.ops.disable_weight_init)
    family, targets = family_targets(dev)
    assert family == "flux" and len(targets) == 4 * 19 + 2 * 38
    spec = EncoderSpec("clip_vision", image_size=224, token_dim=1024, clip_vision_size="vit-l-14")
    counts = {rank: count_parameters(HyperNetConfig(family=family, targets=tuple(targets), rank=rank, encoder=spec))
              for rank in (4, 16)}
    assert counts[4].outputs == 4 * sum(t.in_features + t.out_features for t in targets)
    assert counts[16].outputs == 4 * counts[4].outputs
    assert counts[16].decoder - counts[4].decoder == 12 * 256  # only the rank embedding grows
    heads = 256 * (3072 + 15360 + 3072 + 9216 + 21504)  # one per (role, width): down 3072, 15360; up 3072, 9216, 21504
    assert heads < counts[4].decoder < heads + 2e6


def test_apply_changes_the_flux_model_and_the_saved_file_through_the_stock_loraloader_equals_it(pack, flux, flux_lora,
                                                                                                prompts, tmp_path):
    (personalized,) = run(pack["HyperSubjectApplyLoRA"], model=flux, subject_lora=flux_lora, strength=0.8)
    base_out, ours = flux_prediction(flux, prompts[0]), flux_prediction(personalized, prompts[0])
    assert torch.isfinite(ours).all() and (ours - base_out).abs().max() > 1e-3
    with model_folder("loras", tmp_path):
        (name,) = run(pack["HyperSubjectSaveLoRA"], subject_lora=flux_lora, name="flux_subject", subfolder="")
        (stock,) = nodes.LoraLoaderModelOnly().load_lora_model_only(flux, name, 0.8)
    assert len(stock.patches) == 6  # every target, mapped by ComfyUI's own key map
    assert torch.allclose(flux_prediction(stock, prompts[0]), ours, rtol=0, atol=1e-5)


def test_a_flux_lora_on_an_sd15_model_is_refused_naming_both_families(pack, sd15, flux_lora):
    with pytest.raises(ValueError, match="trained for flux models, but the MODEL is sd15"):
        run(pack["HyperSubjectApplyLoRA"], model=sd15[0], subject_lora=flux_lora, strength=1.0)


def test_hmcfg_at_cfg_one_equals_its_formula_in_two_batch_rows_on_the_fast_path(pack, flux, flux_lora, prompts):
    positive, negative = prompts
    (personalized,) = run(pack["HyperSubjectApplyLoRA"], model=flux, subject_lora=flux_lora, strength=1.0)
    c, p = flux_prediction(flux, positive), flux_prediction(personalized, positive)
    (guider,) = run(pack["HMCFGGuider"], base_model=flux, personalized_model=personalized, positive=positive,
                    negative=negative, s_text=1.0, s_subject=2.0, start_percent=0.0, end_percent=1.0)
    rows = []
    handle = flux.model.diffusion_model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        got = one_step_denoised(guider, 0.7, shape=LATENT)
    finally:
        handle.remove()
    assert guider.fast and rows == [2]  # [cond, personalized cond]: the unconditional is never evaluated
    expected = c + 2.0 * (p - c)
    assert (p - c).abs().max() > 1e-3
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max())


def test_the_hmcfg_ksampler_with_s_subject_zero_is_the_stock_ksampler_on_flux(pack, flux, flux_lora, prompts):
    (personalized,) = run(pack["HyperSubjectApplyLoRA"], model=flux, subject_lora=flux_lora, strength=1.0)
    latent = {"samples": torch.zeros(LATENT)}
    settings = dict(seed=3, steps=2, sampler_name="euler", scheduler="simple", denoise=1.0)
    (ours,) = run(pack["HMCFGKSampler"], base_model=flux, personalized_model=personalized, positive=prompts[0],
                  negative=prompts[1], s_text=1.0, s_subject=0.0, start_percent=0.0, end_percent=1.0,
                  latent_image=latent, **settings)
    with torch.inference_mode():
        (stock,) = nodes.KSampler().sample(flux, cfg=1.0, positive=prompts[0], negative=prompts[1],
                                           latent_image=latent, **settings)
    assert torch.equal(ours["samples"], stock["samples"])
    (personal,) = run(pack["HMCFGKSampler"], base_model=flux, personalized_model=personalized, positive=prompts[0],
                      negative=prompts[1], s_text=1.0, s_subject=2.0, start_percent=0.0, end_percent=1.0,
                      latent_image=latent, **settings)
    assert torch.isfinite(personal["samples"]).all() and not torch.equal(personal["samples"], stock["samples"])
