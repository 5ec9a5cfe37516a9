"""Bad input through a real server: each case gives its documented error or policy result, and serving goes on."""
import shutil

import pytest
from PIL import Image

import workflow_files
from comfy_server import execution_error
from node_harness import subject_image
from test_workflows import run_ok, saved_images, tiny

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def served(server, hypernet_files):
    folder = server.base / "models" / "hypersubject"
    folder.mkdir(exist_ok=True)
    for name, path in hypernet_files.items():
        shutil.copy(path, folder / name)
    (folder / "empty.safetensors").write_bytes(b"")
    pixels = (subject_image(3, size=64, channels=4)[0].numpy() * 255).astype("uint8")
    Image.fromarray(pixels, "RGBA").save(server.base / "input" / "rgba.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(server.base / "input" / "one_pixel.png")
    if not (server.base / "input" / "subject.png").exists():
        Image.fromarray((subject_image(0)[0].numpy() * 255).astype("uint8")).save(server.base / "input" / "subject.png")
    return server


def one_image_graph(image="subject.png", hypernet="tiny.safetensors", policy="skip") -> dict:
    graph = tiny(workflow_files.api("hypersubject_one_image"))
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":
            inputs["image"] = image
        if node["class_type"] == "HyperSubjectLoader":
            inputs["hypernet_name"] = hypernet
        if node["class_type"] == "HyperSubjectEncode":
            inputs["on_bad_input"] = policy
    return graph


def failure(server, graph) -> str:
    error = execution_error(server.run(graph))
    assert error is not None, "the prompt should have failed"
    return error["exception_message"]


def still_serving(server):
    [image] = saved_images(server, run_ok(server, one_image_graph()))
    assert image.size == (64, 64)


def test_a_missing_clip_vision_names_the_model_to_load(served):
    message = failure(served, one_image_graph(hypernet="tiny_clip_vision.safetensors"))
    assert "vit-l-14" in message and "Load CLIP Vision" in message
    still_serving(served)


def test_a_zero_byte_hypernet_file_is_a_clear_error(served):
    message = failure(served, one_image_graph(hypernet="empty.safetensors"))
    assert "is 0 bytes" in message and "save it again" in message
    still_serving(served)


def test_a_one_pixel_image_errors_only_when_asked_and_is_skipped_otherwise(served):
    assert "1×1 pixels" in failure(served, one_image_graph(image="one_pixel.png", policy="error"))
    [image] = saved_images(served, run_ok(served, one_image_graph(image="one_pixel.png", policy="skip")))
    assert image.size == (64, 64)


def test_an_rgba_image_runs(served):
    [image] = saved_images(served, run_ok(served, one_image_graph(image="rgba.png")))
    assert image.size == (64, 64)


def test_a_path_escaping_save_name_is_refused_and_nothing_is_written_outside(served):
    graph = tiny(workflow_files.api("hypersubject_save_lora"))
    saver = next(n for n in graph.values() if n["class_type"] == "HyperSubjectSaveLoRA")
    saver["inputs"]["name"] = "../../escaped"
    assert "cannot be used" in failure(served, graph)
    assert not list(served.base.rglob("escaped*"))
    still_serving(served)


def test_a_wrong_family_lora_is_refused_by_apply(served, tmp_path):
    """A net whose config says sdxl, applied to the SD1.5 tiny model."""
    import dataclasses

    from bench.tiny_checkpoints import tiny_hypernet
    from hypernet import HyperNet, save

    net = tiny_hypernet()
    sdxl_config = dataclasses.replace(net.config, family="sdxl")
    other = HyperNet(sdxl_config)
    other.load_state_dict(net.state_dict())
    save(str(served.base / "models" / "hypersubject" / "sdxl_like.safetensors"), other)
    message = failure(served, one_image_graph(hypernet="sdxl_like.safetensors"))
    assert "predicted for sdxl models but the MODEL is sd15" in message
    still_serving(served)
