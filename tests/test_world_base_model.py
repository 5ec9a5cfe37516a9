"""The miniature world's base model: checkpoint layout the stock loader detects as SD1.5, and a working train step."""
import numpy as np
import torch

from bench.tiny_checkpoints import SD15_TINY_UNET
from hypernet import find_targets
from bench.world.base.build import read_checkpoint, unet_keys, vae_keys, write_checkpoint
from bench.world.base.train_unet import built_unet, caption_texts, described_contexts, new_world_model, train_step
from bench.world.contexts import all_contexts, parse_prompt
from bench.world.subjects import describe, split_subjects


def _untrained_world_checkpoint(path):
    """A world checkpoint without CLIP-L, built from an untrained model and a random TAESD."""
    from bench.tiny_checkpoints import taesd_state_dict

    unet = new_world_model(seed=0).diffusion_model
    taesd = {k.removeprefix("first_stage_model."): v for k, v in taesd_state_dict(0).items()}
    return write_checkpoint(path, {**unet_keys(unet.state_dict()), **vae_keys(taesd)}, clip_seed=0)


def test_a_world_checkpoint_without_clip_is_detected_as_sd15_by_the_stock_loader(tmp_path):
    import comfy.sd

    path = _untrained_world_checkpoint(tmp_path / "world.safetensors")
    state, metadata = read_checkpoint(path)
    assert metadata["has_clip"] == "false"
    assert all(v.dtype == torch.float16 for k, v in state.items() if k.startswith("model.diffusion_model."))
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path))[:3]
    assert type(model.model.model_config).__name__ == "SD15"
    assert clip is None and vae is not None
    blocks = {t.name.split(".transformer_blocks")[0] for t in find_targets(model.model.diffusion_model)}
    assert blocks == {f"diffusion_model.{b}" for b in ("input_blocks.1.1", "middle_block.1", "output_blocks.0.1",
                                                       "output_blocks.1.1")}
    assert len(find_targets(model.model.diffusion_model)) == 4 * 8  # q, k, v, out of self- and cross-attention


def test_the_base_model_trains_on_descriptions_of_training_subjects_only_then_class_level_and_empty_prompts():
    train, held_out = split_subjects()
    described = described_contexts(train, per_subject=5, seed=0)
    assert len(described) == 5 * len(train) and {s for s, _ in described} == set(train)
    assert all(len({c for s, c in described if s == subject}) == 5 for subject in train)
    texts = caption_texts(described)
    classes = texts[:len(all_contexts())]
    assert classes == [f"a toy on {t.split(' on ', 1)[1]}" for t in classes] and texts[len(classes)] == ""
    for (subject, context), text in zip(described, texts[len(classes) + 1:]):
        assert text.startswith(f"a {describe(subject)} on ") and parse_prompt(text) == context
    assert not any(describe(s) in t for s in held_out for t in texts)


def test_the_training_step_lowers_the_loss_on_a_fixed_batch():
    model = new_world_model(seed=0, unet_config={**SD15_TINY_UNET, "model_channels": 64})  # SD15 layout, narrower
    latents, context = torch.randn(4, 4, 8, 8), torch.randn(4, 77, 768)
    optimizer = torch.optim.AdamW(model.diffusion_model.parameters(), lr=1e-3)
    losses = [train_step(model, optimizer, latents, context, torch.Generator().manual_seed(0)) for _ in range(6)]
    assert losses[-1] < 0.9 * losses[0]


def test_the_subject_weight_weights_the_toys_latent_cells_and_zero_is_plain_mse():
    from bench.world.base.train_unet import UNetConfig, diffusion_loss, training_batch
    from bench.world.render import render, render_with_coverage

    train, _ = split_subjects()
    subject, context = train[0], all_contexts()[0]
    image, coverage = render_with_coverage(subject, context, 64, np.random.default_rng(5))
    assert np.array_equal(image, render(subject, context, 64, np.random.default_rng(5))) and 0 < coverage.mean() < 1
    encodings = torch.zeros(len(caption_texts(described_contexts(train, 2, 0))), 77, 768)
    identity_vae = type("Identity", (), {"encode": staticmethod(lambda x: x[:, :, ::8, ::8])})()
    config = UNetConfig(batch=3, subject_weight=6.0, described_contexts=2)
    _, _, weights = training_batch(config, 0, train, described_contexts(train, 2, 0), identity_vae, encodings)
    assert weights.shape == (3, 1, 8, 8) and weights.min() == 1.0 and 1.0 < weights.max() <= 7.0
    model = new_world_model(seed=0, unet_config={**SD15_TINY_UNET, "model_channels": 64})
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 768)
    plain = diffusion_loss(model, latents, context, torch.Generator().manual_seed(0))
    uniform = diffusion_loss(model, latents, context, torch.Generator().manual_seed(0), torch.full((2, 1, 8, 8), 3.0))
    assert torch.allclose(plain, uniform)


def test_a_run_can_start_from_the_unet_of_a_built_checkpoint(tmp_path):
    path = _untrained_world_checkpoint(tmp_path / "world.safetensors")
    unet = new_world_model(seed=1).diffusion_model
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    unet.load_state_dict(built_unet(path))  # strict: every UNet key and nothing else
    built = new_world_model(seed=0).diffusion_model.state_dict()
    changed = [k for k, v in unet.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(v.dtype == torch.float32 for v in unet.state_dict().values())
    assert all(torch.equal(v, built[k].half().float()) for k, v in unet.state_dict().items())
