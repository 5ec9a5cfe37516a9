"""hypernet against real ComfyUI modules: target discovery, exported key names, per-sample LoRA on a real UNet."""
import copy
import logging

import pytest
import torch

from bench.full_size import SD15_UNET, SDXL_UNET
from bench.tiny_checkpoints import SD15_TINY_UNET as TINY_SD15_UNET
from hypernet import (PerSampleLoRA, PredictedLoRA, family_of, find_targets, to_lora_state_dict)

def comfy_model(unet_config: dict, expected_class: str, device=None):
    """A ComfyUI BaseModel, built the way the checkpoint loader builds it once it has detected the config."""
    import comfy.model_detection

    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    assert type(model_config).__name__ == expected_class
    return model_config.get_model({}, device=device)


def random_lora(targets, k: int, rank: int = 4, alpha: float = 4.0) -> PredictedLoRA:
    down = {t.name: torch.randn(k, rank, t.in_features) / t.in_features ** 0.5 for t in targets}
    up = {t.name: torch.randn(k, t.out_features, rank) for t in targets}
    return PredictedLoRA(list(targets), down, up, rank=rank, alpha=alpha, family="sd15")


@pytest.fixture(scope="module", params=[("sd15", SD15_UNET, "SD15", 128), ("sdxl", SDXL_UNET, "SDXL", 560)],
                ids=["sd15", "sdxl"])
def meta_model(request, comfy_root):
    family, unet_config, expected_class, n_targets = request.param
    return family, comfy_model(unet_config, expected_class, device=torch.device("meta")), n_targets


def test_find_targets_on_full_meta_unets_gives_128_for_sd15_and_560_for_sdxl(meta_model):
    family, model, n_targets = meta_model
    targets = find_targets(model.diffusion_model)
    assert len(targets) == n_targets
    assert family_of(model.diffusion_model) == family
    weight_keys = set(model.state_dict())
    assert all(t.name + ".weight" in weight_keys for t in targets)
    cross_k = [t for t in targets if t.name.endswith("attn2.to_k")]
    assert {t.in_features for t in cross_k} == {768 if family == "sd15" else 2048}
    if family == "sd15":
        assert targets[0].name == "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"


def test_find_targets_refuses_the_wrapper_instead_of_the_diffusion_model(meta_model):
    _, model, _ = meta_model
    with pytest.raises(ValueError, match="pass the diffusion model itself"):
        find_targets(model)


def test_every_exported_key_is_loaded_by_comfyui_lora_loading_onto_its_target(meta_model, caplog):
    import comfy.lora

    _, model, _ = meta_model
    targets = find_targets(model.diffusion_model)
    lora = random_lora(targets, k=2)
    state_dict = to_lora_state_dict(lora, k=1)
    assert len(state_dict) == 3 * len(targets)
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora(state_dict, key_map)
    assert "lora key not loaded" not in caplog.text
    assert set(patches) == {t.name + ".weight" for t in targets}
    for target in targets:
        up, down, alpha = patches[target.name + ".weight"].weights[:3]
        assert torch.equal(up, lora.up[target.name][1]) and torch.equal(down, lora.down[target.name][1])
        assert alpha == 4.0


def test_per_sample_lora_on_a_real_comfyui_unet_equals_comfyui_merging_the_exported_lora(comfy_root):
    import comfy.lora

    base_model = comfy_model(TINY_SD15_UNET, "SD15")
    unet = base_model.diffusion_model.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # ComfyUI's ops skip init: norms to identity, biases zero, weights N(0, 1/fan_in)
        for module in unet.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and name == "weight":
                    param.fill_(1.0)
                elif name == "bias" or param.ndim < 2:
                    param.zero_()
                else:
                    param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
    targets = find_targets(unet)
    assert len(targets) == 8 and family_of(unet) == "sd15"
    lora = random_lora(targets, k=2)
    key_map = comfy.lora.model_lora_keys_unet(base_model, {})
    strength = 0.8

    def merged_by_comfyui(k: int):
        merged = copy.deepcopy(unet)
        for key, patch in comfy.lora.load_lora(to_lora_state_dict(lora, k), key_map).items():
            module = merged.get_submodule(key.removeprefix("diffusion_model.").removesuffix(".weight"))
            module.weight.copy_(comfy.lora.calculate_weight([(strength, patch, 1.0, None, None)],
                                                            module.weight.clone(), key))
        return merged

    x = torch.randn(4, 4, 8, 8)
    t = torch.full((4,), 500.0)
    context = torch.randn(4, 6, 768)
    rows = [0, -1, 1, 0]
    with torch.no_grad():
        base = unet(x, t, context)
        expected = {k: merged_by_comfyui(k)(x, t, context) for k in range(2)}
        with PerSampleLoRA(unet, lora, strength=strength) as psl:
            psl.rows = rows
            out = unet(x, t, context)
    for b, k in enumerate(rows):
        if k == -1:
            assert torch.equal(out[b], base[b])
        else:
            change = (expected[k][b] - base[b]).norm() / base[b].norm()
            assert change > 1e-2
            assert (out[b] - expected[k][b]).norm() / expected[k][b].norm() < 1e-4
