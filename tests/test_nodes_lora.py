"""Apply Predicted LoRA and Save Predicted LoRA: ComfyUI's patch path, stock LoraLoader equality, safe file names."""
import dataclasses

import nodes
import pytest
import safetensors
import torch

from bench.harness.node_harness import model_folder, predicted_lora, run
from test_nodes_hmcfg import single_model_prediction


@pytest.fixture(scope="module")
def lora(pack, hypernet_files):
    return predicted_lora(pack)


@pytest.fixture()
def loras_dir(tmp_path):
    with model_folder("loras", tmp_path) as folder:
        yield folder


@pytest.fixture(scope="module")
def cond(sd15):
    from bench.harness.node_harness import conditioning

    return conditioning(sd15[1], "a toy")


def apply(pack, model, lora, strength):
    return run(pack["HyperSubjectApplyLoRA"], model=model, subject_lora=lora, strength=strength)[0]


def test_apply_returns_a_patched_clone_and_leaves_the_input_model_alone(pack, sd15, lora, cond):
    base = sd15[0]
    before = single_model_prediction(base, cond, 1.0)
    personalized = apply(pack, base, lora, 1.0)
    assert personalized is not base and len(personalized.patches) == len(lora.lora.targets)
    assert not torch.allclose(single_model_prediction(personalized, cond, 1.0), before)
    assert torch.equal(single_model_prediction(base, cond, 1.0), before)


def test_strength_zero_gives_exactly_the_base_output(pack, sd15, lora, cond):
    personalized = apply(pack, sd15[0], lora, 0.0)
    assert torch.equal(single_model_prediction(personalized, cond, 1.0), single_model_prediction(sd15[0], cond, 1.0))


def test_a_lora_for_another_family_is_refused_naming_the_hypernet_file_and_the_fix(pack, sd15, lora):
    sdxl_lora = dataclasses.replace(lora, lora=dataclasses.replace(lora.lora, family="sdxl"))
    with pytest.raises(ValueError, match=r"hypernet 'tiny.safetensors', which was trained for sdxl models, but the "
                                         r"MODEL is sd15: load a sdxl checkpoint, or pick a HyperSubject hypernet "
                                         r"trained for sd15"):
        apply(pack, sd15[0], sdxl_lora, 1.0)


def test_the_saved_file_through_the_stock_loraloader_equals_apply(pack, sd15, lora, cond, loras_dir):
    (name,) = run(pack["HyperSubjectSaveLoRA"], subject_lora=lora, name="subject", subfolder="people")
    assert name == "people/subject.safetensors"
    (stock,) = nodes.LoraLoaderModelOnly().load_lora_model_only(sd15[0], name, 0.8)
    ours = apply(pack, sd15[0], lora, 0.8)
    stock_out, ours_out = single_model_prediction(stock, cond, 1.0), single_model_prediction(ours, cond, 1.0)
    assert torch.allclose(stock_out, ours_out, rtol=0, atol=1e-6)


def test_the_saved_file_carries_provenance_metadata(pack, lora, loras_dir):
    (name,) = run(pack["HyperSubjectSaveLoRA"], subject_lora=lora, name="meta", subfolder="")
    with safetensors.safe_open(loras_dir / name, "pt") as file:
        metadata = file.metadata()
    assert metadata["hypersubject_base_family"] == "sd15"
    assert metadata["hypersubject_hypernet"] == "tiny.safetensors"
    assert metadata["hypersubject_source_image_sha256"] == lora.source_hash
    assert metadata["ss_network_dim"] == "4" and metadata["hypersubject_created"][:2] == "20"


def test_saving_never_overwrites_but_numbers_the_name(pack, lora, loras_dir):
    (loras_dir / "taken.safetensors").write_bytes(b"precious")
    names = [run(pack["HyperSubjectSaveLoRA"], subject_lora=lora, name="taken", subfolder="")[0] for _ in range(2)]
    assert names == ["taken_001.safetensors", "taken_002.safetensors"]
    assert (loras_dir / "taken.safetensors").read_bytes() == b"precious"


@pytest.mark.parametrize("name, subfolder", [("../../x", ""), ("/abs/x", ""), ("con", ""), ("x" * 300, ""),
                                             ("ok", "../outside"), ("ok", "/etc"), ("a\x00b", ""), ("", ""),
                                             (".hidden", "")])
def test_names_that_could_escape_or_break_the_folder_are_refused(pack, lora, loras_dir, name, subfolder):
    with pytest.raises(ValueError, match=r"cannot be used|outside models/loras|is an absolute path"):
        run(pack["HyperSubjectSaveLoRA"], subject_lora=lora, name=name, subfolder=subfolder)
    assert not any(loras_dir.rglob("*.safetensors"))
    assert not (loras_dir.parent / "x.safetensors").exists()


@pytest.mark.parametrize("subfolder", ["/abs", "\\abs", "C:\\loras", "//server/share"])
def test_an_absolute_subfolder_is_refused_as_absolute_with_the_fix(pack, lora, loras_dir, subfolder):
    with pytest.raises(ValueError) as refused:
        run(pack["HyperSubjectSaveLoRA"], subject_lora=lora, name="ok", subfolder=subfolder)
    assert str(refused.value).startswith(f"the subfolder {subfolder!r} is an absolute path, but a folder inside "
                                         f"models/loras/ is expected: give it relative to models/loras/")
    assert not any(loras_dir.rglob("*.safetensors"))


def test_a_bad_part_of_a_subfolder_is_named_with_the_whole_subfolder(pack, lora, loras_dir):
    with pytest.raises(ValueError, match=r"the subfolder 'people//alice' \(its part ''\) cannot be used because it "
                                         r"is empty"):
        run(pack["HyperSubjectSaveLoRA"], subject_lora=lora, name="ok", subfolder="people//alice")


def test_unicode_names_are_kept(pack, lora, loras_dir):
    (name,) = run(pack["HyperSubjectSaveLoRA"], subject_lora=lora, name="Katze Mölle 猫", subfolder="")
    assert name == "Katze Mölle 猫.safetensors" and (loras_dir / name).exists()
