"""Every shipped workflow: its UI file and API twin agree, and the API twin runs end to end on a real server."""
import json

import pytest

from bench.harness import workflow_files
from bench.harness.workflow_files import run_ok, saved_images, tiny

pytestmark = pytest.mark.server


def test_there_are_ui_workflows_each_with_an_api_twin():
    names = workflow_files.names()
    assert len(names) >= 5
    for name in names:
        assert (workflow_files.WORKFLOWS / "api" / f"{name}.json").exists(), f"{name} has no API twin"


@pytest.mark.parametrize("name", workflow_files.names())
def test_the_ui_file_and_its_api_twin_describe_the_same_graph(server, name):
    converted = workflow_files.ui_to_api(workflow_files.ui(name), server.get("/object_info"))
    twin = {node_id: {"class_type": n["class_type"], "inputs": n["inputs"]}
            for node_id, n in workflow_files.api(name).items()}
    assert converted == twin


@pytest.mark.parametrize("name", ["hypersubject_one_image", "hypersubject_several_references",
                                  "hypersubject_guider_custom_sampler"])
def test_the_api_workflow_runs_end_to_end_and_returns_an_image(served, name):
    entry = run_ok(served, tiny(workflow_files.api(name)))
    [image] = saved_images(served, entry)
    assert image.size == (64, 64)


@pytest.mark.parametrize("name, log_line", [("hypersubject_saved_lora_with_loraloader", None),
                                             ("hypersubject_saved_lora_hmcfg", "HM-CFG: fast path")])
def test_the_saved_lora_workflow_feeds_the_stock_loraloader_workflows(served, name, log_line):
    entry = run_ok(served, tiny(workflow_files.api("hypersubject_save_lora")))
    [saved_name] = [text for output in entry["outputs"].values() for text in output.get("text", [])]
    assert (served.base / "models" / "loras" / saved_name).is_file()
    graph = tiny(workflow_files.api(name))
    for node in graph.values():
        if node["class_type"] in ("LoraLoader", "LoraLoaderModelOnly"):
            node["inputs"]["lora_name"] = saved_name
    log_before = len(served.log())
    [image] = saved_images(served, run_ok(served, graph))
    assert image.size == (64, 64)
    if log_line:  # a saved predicted LoRA through LoraLoader runs on HM-CFG's one-call path
        assert log_line in served.log()[log_before:]


def test_a_requeue_is_served_from_cache_and_a_changed_hypernet_reruns_the_loader(served):
    graph = tiny(workflow_files.api("hypersubject_one_image"))
    run_ok(served, graph)
    cached = next(m["data"]["nodes"] for m in run_ok(served, graph)["messages"] if m["type"] == "execution_cached")
    assert set(cached) == set(graph)
    hypernet = served.base / "models" / "hypersubject" / "tiny.safetensors"
    hypernet.write_bytes(hypernet.read_bytes())  # same content, new mtime: the loader must look again
    executed = {m["data"]["node"] for m in run_ok(served, graph)["messages"] if m["type"] == "executing"}
    loader = next(i for i, n in graph.items() if n["class_type"] == "HyperSubjectLoader")
    assert loader in executed


def test_the_batch_script_queues_images_times_prompts_and_collects_every_image(served, tmp_path):
    import subprocess
    import sys

    workflow = tmp_path / "tiny_workflow.json"
    workflow.write_text(json.dumps(tiny(workflow_files.api("hypersubject_one_image"))))
    images = [served.base / "input" / name for name in ("subject.png", "subject_2.png")]
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(workflow_files.WORKFLOWS / "queue_batch.py"), "--server", served.url,
                             "--workflow", str(workflow), "--images", *map(str, images), "--prompt", "a toy",
                             "--prompt", "a toy on a grey background", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4/4 done" in result.stdout
    assert len(list(out.glob("*.png"))) == 4


@pytest.mark.slow  # the server loads the 533M-parameter tiny Flux
def test_the_flux_workflow_runs_over_the_api_on_the_fast_path(served):
    from bench.harness.tiny_files import tiny_flux

    files = tiny_flux()
    for folder, name, kind in (("diffusion_models", "flux1-dev.safetensors", "model"), ("vae", "ae.safetensors", "vae"),
                               ("text_encoders", "clip_l.safetensors", "clip_l")):
        link = served.base / "models" / folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(files[kind])
    graph = tiny(workflow_files.api("hypersubject_flux"))
    for node_id, node in graph.items():
        if node["class_type"] == "HyperSubjectLoader":
            node["inputs"]["hypernet_name"] = "tiny_flux.safetensors"
        if node["class_type"] == "DualCLIPLoader":  # the tiny Flux reads CLIP-L's 768-d text; no T5-XXL fits here
            graph[node_id] = {"class_type": "CLIPLoader",
                              "inputs": {"clip_name": "clip_l.safetensors", "type": "stable_diffusion"}}
    log_before = len(served.log())
    [image] = saved_images(served, run_ok(served, graph))
    assert image.size == (64, 64)
    assert "HM-CFG: fast path" in served.log()[log_before:]
