"""The shipped workflows: UI-format files, their API-format twins, and a UI → API converter driven by /object_info."""
import functools
import importlib.util
import io
import json

from PIL import Image

from .comfy_runtime import REPO
from .comfy_server import execution_error

WORKFLOWS = REPO / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TINY = {"ckpt_name": "sd15_tiny_clip.safetensors", "hypernet_name": "tiny.safetensors",
        "width": 64, "height": 64, "steps": 3}


def names() -> list[str]:
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def ui(name: str) -> dict:
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def api(name: str) -> dict:
    return json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())


def widget_names(node_info: dict) -> list[tuple[str, int]]:
    """(input name, how many widget values it takes) in widget order, as the front end lays them out."""
    order = node_info.get("input_order", {})
    specs = {**node_info["input"].get("required", {}), **node_info["input"].get("optional", {})}
    widgets = []
    for name in [*order.get("required", []), *order.get("optional", [])]:
        kind, options = specs[name][0], (specs[name][1] if len(specs[name]) > 1 else {})
        if isinstance(kind, list) or kind in WIDGET_TYPES:
            extra = int(bool(options.get("control_after_generate"))) + int(bool(options.get("image_upload")))
            widgets.append((name, 1 + extra))
    return widgets


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API-format graph the front end would queue for a UI-format workflow (active nodes only)."""
    links = {link[0]: link for link in workflow["links"]}
    graph = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue
        inputs = {}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, source, source_slot, *_ = links[slot["link"]]
                inputs[slot["name"]] = [str(source), source_slot]
        values = iter(node.get("widgets_values", []))
        for name, count in widget_names(object_info[node["type"]]):
            taken = [next(values) for _ in range(count)]
            if name not in inputs:
                inputs[name] = taken[0]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return graph


def tiny(graph: dict) -> dict:
    """The workflow pointed at the tiny checkpoint and hypernet, at 64 px and 3 steps."""
    for node in graph.values():
        for key, value in TINY.items():
            if key in node["inputs"] and not isinstance(node["inputs"][key], list):
                node["inputs"][key] = value
    return graph


def run_ok(server, graph: dict) -> dict:
    entry = server.run(graph)
    assert execution_error(entry) is None, json.dumps(execution_error(entry))[:2000]
    assert entry["status"]["status_str"] == "success"
    return entry


def saved_images(server, entry) -> list:
    items = [item for output in entry["outputs"].values() for item in output.get("images", [])]
    return [Image.open(io.BytesIO(server.output_bytes(item))) for item in items]


@functools.cache
def queue_batch():
    """`workflows/queue_batch.py`, the standard-library batch script users run, as a module."""
    spec = importlib.util.spec_from_file_location("queue_batch", WORKFLOWS / "queue_batch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
