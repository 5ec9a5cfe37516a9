"""The hypernetwork, its encoder and config, the predicted-LoRA container and the output regularizer."""
import pytest
import torch
from safetensors.torch import load, save

from hypernet import (EmbeddedEncoder, EncoderSpec, HyperNet, HyperNetConfig, PredictedLoRA, Target,
                      combine_references, count_parameters, relative_distance, to_lora_state_dict, weight_l2)

TARGETS = (
    Target("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", 16, 16),
    Target("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k", 24, 16),
    Target("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_out.0", 16, 16),
    Target("diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_v", 24, 32),
)


def tiny_config(**overrides) -> HyperNetConfig:
    fields = dict(family="sd15", targets=TARGETS, rank=3, alpha=6.0, d_model=32, n_layers=2, n_heads=4,
                  encoder=EncoderSpec("embedded", image_size=32, token_dim=20, width=8))
    return HyperNetConfig(**{**fields, **overrides})


def test_an_untrained_net_predicts_a_zero_delta_with_nonzero_down_factors():
    net = HyperNet(tiny_config())
    lora = net(net.encode(torch.rand(2, 48, 40, 3)))
    assert lora.num_subjects == 2 and lora.scale == 2.0
    for t in TARGETS:
        assert lora.down[t.name].shape == (2, 3, t.in_features) and lora.up[t.name].shape == (2, t.out_features, 3)
        assert torch.count_nonzero(lora.up[t.name]) == 0
        assert lora.down[t.name].std() > 0.05  # about 1/sqrt(in): a usable LoRA down init
        assert torch.count_nonzero(lora.delta(t.name, 1)) == 0
    assert torch.equal(weight_l2(lora), torch.zeros(2))


def test_different_subjects_get_different_loras_once_up_heads_are_trained():
    net = HyperNet(tiny_config())
    with torch.no_grad():
        for head in net.decoder.heads.values():
            head.weight.normal_(std=0.1)
    lora = net(torch.randn(2, 5, 20))
    name = TARGETS[0].name
    assert not torch.allclose(lora.delta(name, 0), lora.delta(name, 1))
    assert torch.linalg.matrix_rank(lora.delta(name, 0)) == 3  # rank rows are distinct


def test_weight_l2_equals_the_squared_frobenius_norm_of_the_explicit_product_in_float64():
    k, r = 3, 4
    down = {t.name: torch.randn(k, r, t.in_features, dtype=torch.float64) for t in TARGETS}
    up = {t.name: torch.randn(k, t.out_features, r, dtype=torch.float64) for t in TARGETS}
    lora = PredictedLoRA(list(TARGETS), down, up, rank=r, alpha=2.0, family="sd15")
    explicit = torch.stack([sum((0.5 * up[t.name][i] @ down[t.name][i]).square().sum() for t in TARGETS)
                            for i in range(k)])
    assert torch.allclose(weight_l2(lora), explicit, rtol=1e-12, atol=0)


def random_lora(k: int, r: int, alpha: float) -> PredictedLoRA:
    down = {t.name: torch.randn(k, r, t.in_features, dtype=torch.float64) for t in TARGETS}
    up = {t.name: torch.randn(k, t.out_features, r, dtype=torch.float64) for t in TARGETS}
    return PredictedLoRA(list(TARGETS), down, up, rank=r, alpha=alpha, family="sd15")


def test_the_relative_distance_to_a_teacher_of_another_rank_matches_the_explicit_products_in_float64():
    lora, teacher = random_lora(3, 4, 2.0), random_lora(3, 6, 3.0)
    explicit = torch.stack([sum((lora.delta(t.name, i) - teacher.delta(t.name, i)).square().sum() for t in TARGETS)
                            / sum(teacher.delta(t.name, i).square().sum() for t in TARGETS) for i in range(3)])
    assert torch.allclose(relative_distance(lora, teacher), explicit, rtol=1e-10, atol=0)
    assert torch.allclose(relative_distance(teacher, teacher), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    zero = PredictedLoRA(lora.targets, lora.down, {n: torch.zeros_like(u) for n, u in lora.up.items()}, 4, 2.0, "sd15")
    assert torch.allclose(relative_distance(zero, teacher), torch.ones(3, dtype=torch.float64), rtol=1e-12)
    picked = teacher.select(torch.tensor([2, 0, 2]))
    assert torch.equal(picked.delta(TARGETS[0].name, 0), teacher.delta(TARGETS[0].name, 2))
    assert torch.equal(picked.delta(TARGETS[0].name, 1), teacher.delta(TARGETS[0].name, 0))


def test_weight_l2_is_invariant_to_rescaling_up_and_down_in_opposite_directions():
    lora = HyperNet(tiny_config())(torch.randn(1, 5, 20))
    lora.up = {n: torch.randn_like(u, dtype=torch.float64) for n, u in lora.up.items()}
    lora.down = {n: d.double() for n, d in lora.down.items()}
    rescaled = PredictedLoRA(lora.targets, {n: 10 * d for n, d in lora.down.items()},
                             {n: u / 10 for n, u in lora.up.items()}, lora.rank, lora.alpha, lora.family)
    assert torch.allclose(weight_l2(rescaled), weight_l2(lora), rtol=1e-12)


def test_subject_and_to_give_single_subject_loras_and_the_export_is_contiguous_and_saveable():
    lora = HyperNet(tiny_config())(torch.randn(3, 5, 20))
    last = lora.subject(-1).to(torch.float64)
    assert last.num_subjects == 1 and last.down[TARGETS[1].name].dtype == torch.float64
    assert torch.equal(last.down[TARGETS[1].name][0], lora.down[TARGETS[1].name][2].double())
    state_dict = to_lora_state_dict(lora, k=2)
    assert all(v.is_contiguous() for v in state_dict.values())
    stem = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_out_0"
    assert state_dict[f"{stem}.lora_up.weight"].shape == (16, 3) and state_dict[f"{stem}.alpha"].item() == 6.0
    assert set(load(save(state_dict))) == set(state_dict)


def test_combine_references_averages_or_concatenates_and_names_the_modes_on_a_typo():
    tokens = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(combine_references(tokens, "mean"), ((tokens[0] + tokens[1]) / 2)[None])
    concat = combine_references(tokens, "concat")
    assert concat.shape == (1, 6, 4) and torch.equal(concat[0, 3:], tokens[1])
    with pytest.raises(ValueError, match=r"'average'.*\('mean', 'concat'\)"):
        combine_references(tokens, "average")


def test_preprocess_makes_rgb_squares_grey_repeats_and_alpha_composites_on_mid_grey():
    encoder = EmbeddedEncoder(EncoderSpec("embedded", image_size=16, token_dim=8, width=8))
    grey = encoder.preprocess(torch.full((1, 20, 40, 1), 0.25))
    assert grey.shape == (1, 16, 16, 3) and torch.allclose(grey, torch.tensor(0.25))
    rgba = torch.zeros(2, 16, 16, 4)
    rgba[0, ..., 3] = 1.0  # opaque black stays black, transparent black becomes mid grey
    assert torch.equal(encoder.preprocess(rgba)[0], torch.zeros(16, 16, 3))
    assert torch.equal(encoder.preprocess(rgba)[1], torch.full((16, 16, 3), 0.5))
    wide = torch.zeros(1, 16, 48, 3)
    wide[:, :, 16:32] = 1.0  # only the centre third is white: the centre crop keeps exactly it
    assert torch.equal(encoder.preprocess(wide), torch.ones(1, 16, 16, 3))
    assert encoder(torch.rand(2, 30, 20, 3)).shape == (2, 1, 8)
    with pytest.raises(ValueError, match="C in 1..4"):
        encoder.preprocess(torch.rand(1, 16, 16, 5))


def test_config_round_trips_through_a_json_dict_and_rejects_unknown_fields():
    import json

    config = tiny_config(encoder=EncoderSpec("clip_vision", image_size=224, token_dim=1024,
                                             clip_vision_size="vit-l-14"))
    d = json.loads(json.dumps(config.to_dict()))
    assert d["targets"][1] == [TARGETS[1].name, 24, 16]
    assert HyperNetConfig.from_dict(d) == config
    with pytest.raises(ValueError, match="unknown hypernet config fields"):
        HyperNetConfig.from_dict({**d, "depth": 3})
    with pytest.raises(ValueError, match="unknown base-model family 'sd3'"):
        tiny_config(family="sd3")
    with pytest.raises(ValueError, match="gives 1024-d tokens, but token_dim is 768"):
        EncoderSpec("clip_vision", image_size=224, token_dim=768, clip_vision_size="vit-l-14")


def test_a_clip_vision_net_asks_for_clip_tokens_and_checks_their_width():
    net = HyperNet(tiny_config(encoder=EncoderSpec("clip_vision", 224, 1024, clip_vision_size="vit-l-14")))
    assert net.encoder is None
    with pytest.raises(ValueError, match="load a vit-l-14 CLIP_VISION model"):
        net.encode(torch.rand(1, 224, 224, 3))
    with pytest.raises(ValueError, match=r"expected subject tokens \[K, N, 1024\]"):
        net(torch.randn(1, 257, 768))
    assert net(torch.randn(2, 257, 1024)).num_subjects == 2


def test_count_parameters_matches_the_built_net_and_counts_predicted_numbers():
    config = tiny_config()
    count = count_parameters(config)
    net = HyperNet(config)
    assert count.decoder == sum(p.numel() for p in net.decoder.parameters())
    assert count.encoder == sum(p.numel() for p in net.encoder.parameters())
    assert count.outputs == 3 * sum(t.in_features + t.out_features for t in TARGETS)
