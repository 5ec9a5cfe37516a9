"""Load Subject Hypernet, Encode Subject and Predict LoRA: caching, image kinds, the bad-input policy, CLIP vision."""
import os

import pytest
import torch

from bench.harness.node_harness import predicted_lora, run, subject_image


@pytest.fixture(scope="module")
def net(pack, hypernet_files):
    return run(pack["HyperSubjectLoader"], hypernet_name="tiny.safetensors")[0]


def encode(pack, net, image, policy="error", combine="mean", **extra):
    return run(pack["HyperSubjectEncode"], hypernet=net, image=image, combine=combine, on_bad_input=policy, **extra)


def test_the_loader_lists_its_folder_and_caches_the_loaded_net(pack, hypernet_files):
    schema = pack["HyperSubjectLoader"].define_schema()
    assert "tiny.safetensors" in schema.inputs[0].options
    first = run(pack["HyperSubjectLoader"], hypernet_name="tiny.safetensors")[0]
    again = run(pack["HyperSubjectLoader"], hypernet_name="tiny.safetensors")[0]
    assert first is again


def test_a_changed_hypernet_file_is_reloaded_and_fingerprinted_anew(pack, hypernet_files):
    loader = pack["HyperSubjectLoader"]
    path = hypernet_files["tiny.safetensors"]
    before, fingerprint = run(loader, hypernet_name="tiny.safetensors")[0], loader.fingerprint_inputs("tiny.safetensors")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert loader.fingerprint_inputs("tiny.safetensors") != fingerprint
    assert run(loader, hypernet_name="tiny.safetensors")[0] is not before


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_grayscale_rgb_and_rgba_images_encode_to_the_same_token_shape(pack, net, channels):
    embeds, preview = encode(pack, net, subject_image(channels=channels, size=80))
    assert embeds.tokens.shape[0] == 1 and torch.isfinite(embeds.tokens).all()
    assert preview.shape == (1, 64, 64, 3)


def test_several_references_combine_by_mean_or_concat(pack, net):
    images = torch.cat([subject_image(1), subject_image(2), subject_image(3)])
    mean, _ = encode(pack, net, images, combine="mean")
    concat, _ = encode(pack, net, images, combine="concat")
    single, _ = encode(pack, net, images[:1])
    assert mean.tokens.shape == single.tokens.shape
    assert concat.tokens.shape[1] == 3 * single.tokens.shape[1]
    assert mean.images_used == 3


def test_a_mask_changes_what_the_encoder_sees(pack, net):
    image = subject_image(4)
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    plain, _ = encode(pack, net, image)
    masked, preview = encode(pack, net, image, mask=mask)
    assert not torch.allclose(plain.tokens, masked.tokens)
    assert torch.allclose(preview[0, 0, 0], torch.full((3,), 0.5))


def test_a_one_pixel_image_is_a_clear_error_when_errors_are_asked_for(pack, net):
    with pytest.raises(ValueError, match=r"1×1 pixels.*on_bad_input"):
        encode(pack, net, torch.rand(1, 1, 1, 3))


def test_skip_drops_bad_images_and_keeps_the_good_ones(pack, net):
    batch = torch.cat([subject_image(5), torch.zeros(1, 64, 64, 3), subject_image(6)])
    embeds, _ = encode(pack, net, batch, policy="skip")
    assert embeds.images_used == 2


def test_skip_with_no_usable_image_makes_a_lora_that_changes_nothing(pack, net, sd15):
    embeds, _ = encode(pack, net, torch.zeros(2, 64, 64, 3), policy="skip")
    assert embeds.tokens is None
    (lora,) = run(pack["HyperSubjectPredictLoRA"], hypernet=net, subject=embeds)
    (model,) = run(pack["HyperSubjectApplyLoRA"], model=sd15[0], subject_lora=lora, strength=1.0)
    assert model.patches == sd15[0].patches


def test_pass_through_encodes_a_flat_image_anyway(pack, net):
    embeds, _ = encode(pack, net, torch.full((1, 64, 64, 3), 0.3), policy="pass_through")
    assert embeds.images_used == 1 and torch.isfinite(embeds.tokens).all()


def test_a_clip_vision_hypernet_without_clip_vision_names_the_encoder_to_load(pack, hypernet_files):
    (net,) = run(pack["HyperSubjectLoader"], hypernet_name="tiny_clip_vision.safetensors")
    with pytest.raises(ValueError, match=r"vit-l-14.*Load CLIP Vision"):
        encode(pack, net, subject_image())


@pytest.mark.slow
def test_a_clip_vision_hypernet_encodes_with_the_stock_clip_vision_model(pack, hypernet_files):
    import comfy.clip_vision
    from bench.harness.tiny_files import tiny_clip_vision

    (net,) = run(pack["HyperSubjectLoader"], hypernet_name="tiny_clip_vision.safetensors")
    clip_vision = comfy.clip_vision.load(str(tiny_clip_vision()))
    embeds, preview = encode(pack, net, subject_image(size=96), clip_vision=clip_vision)
    assert embeds.tokens.shape == (1, 257, 1024)
    assert preview.shape == (1, 224, 224, 3)
    (lora,) = run(pack["HyperSubjectPredictLoRA"], hypernet=net, subject=embeds)
    assert lora.lora.num_subjects == 1


def test_predict_refuses_embeds_from_another_hypernet(pack, net, hypernet_files):
    (other,) = run(pack["HyperSubjectLoader"], hypernet_name="tiny_clip_vision.safetensors")
    embeds, _ = encode(pack, net, subject_image())
    with pytest.raises(ValueError, match="same Load Subject Hypernet"):
        run(pack["HyperSubjectPredictLoRA"], hypernet=other, subject=embeds)


def test_different_subjects_get_different_loras(pack, hypernet_files):
    first = predicted_lora(pack, image=subject_image(7)).lora
    second = predicted_lora(pack, image=subject_image(8)).lora
    name = first.targets[0].name
    assert not torch.allclose(first.delta(name), second.delta(name))


def test_a_folder_from_extra_model_paths_is_kept_and_lists_model_files_only(pack, tmp_path):
    import importlib

    import folder_paths

    model_folder = importlib.import_module(pack["HyperSubjectLoader"].__module__.rsplit(".", 1)[0] + ".model_folder")
    saved = folder_paths.folder_names_and_paths["hypersubject"]
    (tmp_path / "from_yaml.safetensors").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a model")
    try:
        folder_paths.folder_names_and_paths["hypersubject"] = ([str(tmp_path)], set())  # as extra_model_paths.yaml
        model_folder.register_model_folder()
        paths, _ = folder_paths.folder_names_and_paths["hypersubject"]
        assert str(tmp_path) in paths and len(paths) == 2
        listed = model_folder.hypernet_files()
        assert "from_yaml.safetensors" in listed and "notes.txt" not in listed
    finally:
        folder_paths.folder_names_and_paths["hypersubject"] = saved
