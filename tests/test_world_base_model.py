"""The miniature world's base model: checkpoint layout the stock loader detects as SD1.5, and a working train step."""
import torch

from bench.tiny_checkpoints import SD15_TINY_UNET
from bench.world.base.build import read_checkpoint, unet_keys, vae_keys, write_checkpoint
from bench.world.base.train_unet import new_world_model, train_step


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


def test_the_training_step_lowers_the_loss_on_a_fixed_batch():
    model = new_world_model(seed=0, unet_config={**SD15_TINY_UNET, "model_channels": 64})  # SD15 layout, narrower
    latents, context = torch.randn(4, 4, 8, 8), torch.randn(4, 77, 768)
    optimizer = torch.optim.AdamW(model.diffusion_model.parameters(), lr=1e-3)
    losses = [train_step(model, optimizer, latents, context, torch.Generator().manual_seed(0)) for _ in range(6)]
    assert losses[-1] < 0.9 * losses[0]
