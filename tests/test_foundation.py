"""The runtime the pack is tested on: real ComfyUI in-process, tiny real checkpoints, the stock nodes."""
import pytest
import torch


@pytest.fixture(scope="module")
def stock(comfy_root, checkpoints):
    """Stock ComfyUI nodes with the tiny checkpoints' folder registered under `checkpoints`."""
    import folder_paths
    import nodes

    folder = str(next(iter(checkpoints.values())).parent)
    folder_paths.add_model_folder_path("checkpoints", folder)
    return nodes


def test_the_tiny_checkpoint_is_detected_as_sd15_by_the_stock_loader(stock):
    model, clip, vae = stock.CheckpointLoaderSimple().load_checkpoint("sd15_tiny_clip.safetensors")[:3]
    assert type(model.model.model_config).__name__ == "SD15"
    assert clip is not None and vae is not None
    assert sum(p.numel() for p in model.model.diffusion_model.parameters()) < 20e6


def test_the_checkpoint_without_text_encoder_loads_with_no_clip(stock):
    model, clip, _ = stock.CheckpointLoaderSimple().load_checkpoint("sd15_tiny.safetensors")[:3]
    assert type(model.model.model_config).__name__ == "SD15"
    assert clip is None


def test_the_stock_ksampler_gives_finite_latents_that_differ_by_seed(stock):
    model, clip, _ = stock.CheckpointLoaderSimple().load_checkpoint("sd15_tiny_clip.safetensors")[:3]
    positive = stock.CLIPTextEncode().encode(clip, "a toy on a blue background")[0]
    negative = stock.CLIPTextEncode().encode(clip, "")[0]
    latent = stock.EmptyLatentImage().generate(64, 64, 1)[0]

    def sample(seed):
        return stock.KSampler().sample(model, seed, 4, 5.0, "euler", "normal", positive, negative, latent)[0]["samples"]

    a, b, a_again = sample(1), sample(2), sample(1)
    assert torch.isfinite(a).all() and a.shape == (1, 4, 8, 8)
    assert not torch.allclose(a, b)
    assert torch.equal(a, a_again)


def test_tiny_checkpoints_are_deterministic_from_their_seed(comfy_root, tmp_path):
    from bench.tiny_checkpoints import tiny_unet_state_dict

    first, second, other = tiny_unet_state_dict(0), tiny_unet_state_dict(0), tiny_unet_state_dict(1)
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert torch.equal(first[key], second[key])
    assert not torch.equal(first[key], other[key])
    assert all(torch.isfinite(v).all() for v in first.values())


@pytest.mark.slow
def test_the_random_vit_l_loads_with_the_stock_clip_vision_loader(comfy_root):
    import comfy.clip_vision
    from bench.harness.tiny_files import tiny_clip_vision

    clip_vision = comfy.clip_vision.load(str(tiny_clip_vision()))
    output = clip_vision.encode_image(torch.rand(2, 80, 64, 3))
    assert output.penultimate_hidden_states.shape == (2, 257, 1024)
    assert torch.isfinite(output.penultimate_hidden_states).all()
