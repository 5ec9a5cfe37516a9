"""End-to-end through a real ComfyUI server: the pack loads cleanly and stock graphs run."""
import io

import pytest
from PIL import Image

from bench.harness.comfy_server import PACK_NAME, execution_error

pytestmark = pytest.mark.server



def txt2img_graph(checkpoint: str, seed: int = 0) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a toy on a blue background"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "foundation"}},
    }


def test_the_pack_imports_inside_comfyui_without_errors(server):
    # Start-up only (later tests log the pack's own refusals of bad files on purpose), and only lines about this
    # pack: ComfyUI's own audio nodes fail to import without torchaudio.
    startup = server.log().split("Starting server")[0]
    pack_lines = [line for line in startup.splitlines() if f"custom_nodes/{PACK_NAME}" in line]
    assert pack_lines, "the pack was not found in custom_nodes/"
    assert not [line for line in pack_lines if "IMPORT FAILED" in line or "Traceback" in line or "Error" in line]
    assert f"Cannot import {server.base / 'custom_nodes' / PACK_NAME}" not in startup


def test_the_stock_txt2img_graph_returns_an_image(server):
    entry = server.run(txt2img_graph("sd15_tiny_clip.safetensors"))
    assert execution_error(entry) is None
    assert entry["status"]["status_str"] == "success"
    [item] = entry["outputs"]["7"]["images"]
    image = Image.open(io.BytesIO(server.output_bytes(item)))
    assert image.size == (64, 64)


def test_a_requeued_graph_is_served_from_the_cache(server):
    graph = txt2img_graph("sd15_tiny_clip.safetensors", seed=7)
    server.run(graph)
    again = server.run(graph)
    cached = next(m["data"]["nodes"] for m in again["messages"] if m["type"] == "execution_cached")
    assert set(cached) == set(graph)


def test_every_node_of_the_pack_appears_in_object_info_with_tooltips(server):
    from bench.harness.node_harness import NODE_IDS

    info = server.get("/object_info")
    for node_id in NODE_IDS:
        assert node_id in info, f"{node_id} missing from /object_info"
        inputs = {**info[node_id]["input"]["required"], **info[node_id]["input"].get("optional", {})}
        untipped = [name for name, spec in inputs.items() if not spec[1].get("tooltip")]
        assert not untipped, f"{node_id}: inputs without a tooltip: {untipped}"
