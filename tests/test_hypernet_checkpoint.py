"""The checkpoint format: exact round trip, and a helpful CheckpointError for every kind of wrong file."""
import json
import pathlib
import pickle

import pytest
import torch
from safetensors.torch import save_file

from hypernet import CheckpointError, EncoderSpec, HyperNet, HyperNetConfig, Target, load, save, to_lora_state_dict

TARGETS = (Target("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q", 16, 16),
           Target("diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k", 24, 16))


@pytest.fixture
def net() -> HyperNet:
    config = HyperNetConfig(family="sd15", targets=TARGETS, rank=2, d_model=16, n_heads=2,
                            encoder=EncoderSpec("embedded", image_size=16, token_dim=8, width=8))
    net = HyperNet(config)
    with torch.no_grad():
        for param in net.parameters():
            param.normal_()  # no zeros left from init: a mix-up of tensors would show
    return net


@pytest.fixture
def saved(tmp_path, net) -> pathlib.Path:
    path = tmp_path / "subject.safetensors"
    save(path, net, training={"steps": 10, "dataset": "toys"})
    return path


def write(path, tensors: dict, doc: dict | None) -> pathlib.Path:
    save_file(tensors, path, metadata=None if doc is None else {"hypersubject": json.dumps(doc)})
    return path


def document(net: HyperNet, **changes) -> dict:
    return {"format": "hypersubject", "format_version": 1, "config": net.config.to_dict(), "training": {}, **changes}


def test_save_then_load_gives_bitwise_equal_tensors_the_same_config_and_the_training_dict(saved, net):
    loaded, meta = load(saved, expect_family="sd15")
    assert loaded.config == net.config and not loaded.training
    assert meta["format_version"] == 1 and meta["training"] == {"steps": 10, "dataset": "toys"}
    expected = net.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # the temp file was renamed away


def test_a_missing_file_says_where_to_put_the_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match=r"no hypernet checkpoint at .*models/hypersubject"):
        load(tmp_path / "absent.safetensors")


def test_a_zero_byte_file_is_refused_as_empty_or_truncated(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.touch()
    with pytest.raises(CheckpointError, match="is 0 bytes.*empty or truncated"):
        load(path)


@pytest.mark.parametrize("keep", ["header_only", "most_of_the_data"])
def test_a_truncated_file_is_refused_with_advice_to_download_again(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:40] if keep == "header_only" else data[:-100])
    with pytest.raises(CheckpointError, match="truncated.*download or save it again"):
        load(saved)


class Trap:
    """Unpickling this creates the marker file: proof that a loader executed pickle code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


PICKLE_REFUSED = (r"is a pickle \(a PyTorch .pt/.ckpt or another Python pickle, perhaps renamed\) but a safetensors "
                  r"file is expected, and HyperSubject never unpickles files: use a HyperSubject .safetensors "
                  r"checkpoint \(the trainer writes hypernet.safetensors")


@pytest.mark.parametrize("zip_container", [True, False], ids=["zip", "legacy"])
def test_a_renamed_pickle_is_refused_without_being_unpickled(tmp_path, zip_container):
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / "hypernet.safetensors"
    torch.save({"weights": torch.zeros(3), "trap": Trap(marker)}, path,
               _use_new_zipfile_serialization=zip_container)
    with pytest.raises(CheckpointError, match=PICKLE_REFUSED):
        load(path)
    assert not marker.exists()
    armed = tmp_path / "hypernet.pt"  # torch.load routes a .safetensors name to safetensors: unpickle a copy
    armed.write_bytes(path.read_bytes())
    torch.load(armed, weights_only=False)  # the trap is armed: unpickling does create the marker
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 1])
def test_a_renamed_protocol_0_or_1_pickle_has_no_magic_bytes_yet_is_refused_as_a_pickle(tmp_path, protocol):
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / "hypernet.safetensors"
    path.write_bytes(pickle.dumps({"weights": [0.0] * 3, "trap": Trap(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError, match=PICKLE_REFUSED):
        load(path)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the trap is armed
    assert marker.exists()


def test_a_file_that_is_not_safetensors_at_all_is_refused_saying_what_was_found_and_what_to_use(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are not the weights you are looking for")
    with pytest.raises(CheckpointError, match=r"is not a safetensors file: expected an 8-byte header length and then "
                                              r"JSON, found b'these are' at its start; use a HyperSubject "
                                              r".safetensors checkpoint .* models/hypersubject/"):
        load(path)


def test_a_plain_safetensors_lora_is_refused_as_not_a_hypersubject_checkpoint(tmp_path, net):
    lora = net(torch.randn(1, 4, 8))
    path = write(tmp_path / "lora.safetensors", to_lora_state_dict(lora), doc=None)
    with pytest.raises(CheckpointError, match="not a HyperSubject checkpoint.*no metadata.*LoraLoader"):
        load(path)


def test_a_hypernet_for_another_family_is_refused_naming_both_families(saved):
    with pytest.raises(CheckpointError, match="trained for sd15 but the MODEL is sdxl; load a sdxl hypernet"):
        load(saved, expect_family="sdxl")


def test_a_newer_format_version_asks_to_update_hypersubject(tmp_path, net):
    path = write(tmp_path / "future.safetensors", net.state_dict(), document(net, format_version=2))
    with pytest.raises(CheckpointError, match="format_version 2 but this HyperSubject reads up to 1: update"):
        load(path)


def test_missing_extra_or_reshaped_tensors_are_refused_naming_them(tmp_path, net):
    tensors = {k: v.clone() for k, v in net.state_dict().items()}
    del tensors["decoder.rank_emb"]
    tensors["decoder.extra"] = torch.zeros(1)
    tensors["decoder.target_emb"] = torch.zeros(3, 16)
    path = write(tmp_path / "edited.safetensors", tensors, document(net))
    with pytest.raises(CheckpointError, match=r"missing tensors \['decoder.rank_emb'\].*unexpected tensors "
                                              r"\['decoder.extra'\].*decoder.target_emb: expected \[2, 16\], "
                                              r"found \[3, 16\]"):
        load(path)


def test_a_damaged_config_in_the_metadata_is_refused(tmp_path, net):
    broken = {**net.config.to_dict(), "rank": 0}
    path = write(tmp_path / "broken.safetensors", net.state_dict(), document(net, config=broken))
    with pytest.raises(CheckpointError, match="config in its metadata is invalid.*rank 0"):
        load(path)


def test_a_training_dict_that_is_not_json_is_refused_before_anything_is_written(tmp_path, net):
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save(tmp_path / "net.safetensors", net, training={"started": object()})
    assert list(tmp_path.iterdir()) == []
