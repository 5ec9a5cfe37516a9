"""Bad input through a real server: each case gives its documented error or policy result, and serving goes on."""

import pytest
from PIL import Image

from bench.harness import workflow_files
from bench.harness.comfy_server import execution_error
from bench.harness.node_harness import subject_image
from bench.harness.workflow_files import run_ok, saved_images, tiny

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def served(served):
    """The shared served server plus a zero-byte hypernet, an RGBA image and a 1×1 image."""
    (served.base / "models" / "hypersubject" / "empty.safetensors").write_bytes(b"")
    pixels = (subject_image(3, size=64, channels=4)[0].numpy() * 255).astype("uint8")
    Image.fromarray(pixels, "RGBA").save(served.base / "input" / "rgba.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(served.base / "input" / "one_pixel.png")
    return served


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
    assert "hypernet 'sdxl_like.safetensors', which was trained for sdxl models, but the MODEL is sd15" in message
    assert "pick a HyperSubject hypernet trained for sd15" in message
    still_serving(served)


# The bad-input matrix: (case, how to break the one-image workflow, documented result: "success" or a message part)
def with_node(class_type, **inputs):
    def change(graph, server):
        for node in graph.values():
            if node["class_type"] == class_type:
                node["inputs"].update(inputs)
    return change


def repeated_image(amount):
    def change(graph, server):
        encode = next(n for n in graph.values() if n["class_type"] == "HyperSubjectEncode")
        graph["repeat"] = {"class_type": "RepeatImageBatch", "inputs": {"image": encode["inputs"]["image"],
                                                                          "amount": amount}}
        encode["inputs"]["image"] = ["repeat", 0]
    return change


def nan_latent(graph, server):
    import torch
    from safetensors.torch import save_file

    save_file({"latent_tensor": torch.full((1, 4, 8, 8), float("nan"))}, str(server.base / "input" / "nan.latent"))
    sampler = next(n for n in graph.values() if n["class_type"] == "HMCFGKSampler")
    graph["nan"] = {"class_type": "LoadLatent", "inputs": {"latent": "nan.latent"}}
    sampler["inputs"].update(latent_image=["nan", 0], denoise=0.5)


def future_widget(graph, server):
    next(n for n in graph.values() if n["class_type"] == "HMCFGKSampler")["inputs"]["a_future_option"] = 7


MATRIX = {
    "truncated hypernet": (with_node("HyperSubjectLoader", hypernet_name="truncated.safetensors"), "truncated"),
    "pickle renamed to .safetensors": (with_node("HyperSubjectLoader", hypernet_name="pickle.safetensors"),
                                       "pickle"),
    "8000×8000 image": (with_node("LoadImage", image="huge.png"), "success"),
    "grayscale image": (with_node("LoadImage", image="gray.png"), "success"),
    "all-black image, skip": (with_node("LoadImage", image="black.png"), "success"),
    "all-black image, error": (lambda g, s: (with_node("LoadImage", image="black.png")(g, s),
                                             with_node("HyperSubjectEncode", on_bad_input="error")(g, s)),
                               "single flat colour"),
    "a batch of 64 images": (repeated_image(64), "success"),
    "NaN-filled latent": (nan_latent, "NaN or infinite"),
    "strength and scales at their maxima": (lambda g, s: (with_node("HyperSubjectApplyLoRA", strength=10.0)(g, s),
                                                          with_node("HMCFGKSampler", s_text=100.0, s_subject=100.0)(g, s)),
                                            "success"),
    "strength and scales at their minima": (lambda g, s: (with_node("HyperSubjectApplyLoRA", strength=-10.0)(g, s),
                                                          with_node("HMCFGKSampler", s_text=0.0, s_subject=-100.0)(g, s)),
                                            "success"),
    "an input from a future version": (future_widget, "success"),
}


@pytest.fixture(scope="module")
def matrix_files(served):
    import numpy as np
    import torch

    from bench.harness.node_harness import subject_image

    folder = served.base / "models" / "hypersubject"
    good = (folder / "tiny.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(3)}, folder / "pickle.safetensors", _use_new_zipfile_serialization=False)
    ramp = np.linspace(0, 255, 8000, dtype=np.uint8)
    Image.fromarray(np.stack([np.add.outer(ramp, ramp) // 2] * 3, -1).astype(np.uint8)).save(
        served.base / "input" / "huge.png")
    Image.fromarray((subject_image(5)[0, ..., 0].numpy() * 255).astype("uint8"), "L").save(
        served.base / "input" / "gray.png")
    Image.new("RGB", (64, 64)).save(served.base / "input" / "black.png")
    return served


def files_under(base) -> set:
    return {p.relative_to(base) for p in base.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", list(MATRIX))
def test_the_bad_input_matrix_gives_each_documented_result_and_writes_nowhere_else(matrix_files, case):
    server = matrix_files
    change, expected = MATRIX[case]
    graph = one_image_graph()
    change(graph, server)
    before = files_under(server.base)
    entry = server.run(graph)
    error = execution_error(entry)
    if expected == "success":
        assert error is None, error and error["exception_message"]
        [image] = saved_images(server, entry)
        assert image.size == (64, 64)
    else:
        assert error is not None and expected in error["exception_message"], error
    written = files_under(server.base) - before
    allowed = ("output", "temp", "user", "models/loras")
    assert all(str(p).startswith(allowed) for p in written), sorted(map(str, written))
    still_serving(server)
