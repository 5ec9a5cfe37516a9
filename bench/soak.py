"""API batch soak: many HM-CFG + Save Predicted LoRA prompts through a real ComfyUI server; throughput and memory.

    .venv/bin/python -m bench.soak [--prompts 100]

Starts its own server on 127.0.0.1 with the tiny checkpoint and a tiny hypernet, queues subjects × prompts × seeds
(each prompt also saves its LoRA under its own name), waits for all, and reports prompts/min and the server's
resident memory after the first 10 prompts and at the end.
"""
import argparse
import itertools
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.measure import rss_mb

PROMPTS = ["a toy on a blue background", "a toy on a green background, small", "a toy at the left",
           "a toy on a grey background, dim light", "a toy"]


@dataclass
class SoakResult:
    prompts: int
    succeeded: int
    seconds: float
    rss_after_10_mb: float
    rss_end_mb: float
    saved_loras: list

    @property
    def per_minute(self) -> float:
        return 60 * self.prompts / self.seconds



def soak_graph(base_graph: dict, image: str, prompt: str, seed: int, index: int) -> dict:
    """The one-image HM-CFG workflow for this case, plus a Save Predicted LoRA under its own name."""
    from bench.harness.workflow_files import queue_batch

    graph = queue_batch().personalize(base_graph, image, prompt, seed)
    lora_source = next(i for i, n in graph.items() if n["class_type"] == "HyperSubjectPredictLoRA")
    graph["soak_save"] = {"class_type": "HyperSubjectSaveLoRA",
                          "inputs": {"subject_lora": [lora_source, 0], "name": f"soak_{index:04d}", "subfolder": "soak"}}
    return graph


def wait_all(server, prompt_ids: list[str], timeout: float) -> dict:
    deadline, done = time.monotonic() + timeout, {}
    for prompt_id in prompt_ids:
        done[prompt_id] = server.history(prompt_id, timeout=max(1.0, deadline - time.monotonic()))
    return done


def run_soak(server, base_graph: dict, images: list[str], n_prompts: int, timeout: float = 1800) -> SoakResult:
    """Queue n_prompts cases (subjects × prompts × seeds), the first 10 alone to take the memory baseline."""
    cases = list(itertools.islice(itertools.product(range(1000), images, PROMPTS), n_prompts))
    graphs = [soak_graph(base_graph, image, prompt, seed, i) for i, (seed, image, prompt) in enumerate(cases)]
    start = time.monotonic()
    first = [server.queue(g, "soak") for g in graphs[:10]]
    entries = wait_all(server, first, timeout)
    rss_after_10 = rss_mb(server.process.pid)
    rest = [server.queue(g, "soak") for g in graphs[10:]]
    entries.update(wait_all(server, rest, timeout))
    seconds = time.monotonic() - start
    succeeded = sum(e["status"]["status_str"] == "success" for e in entries.values())
    saved = sorted((server.base / "models" / "loras" / "soak").glob("*.safetensors"))
    return SoakResult(len(graphs), succeeded, seconds, rss_after_10, rss_mb(server.process.pid), saved)


def prepared_server(base: Path):
    """A started server with the tiny checkpoint, a tiny hypernet and four subject images."""
    from PIL import Image

    from bench.tiny_checkpoints import write_tiny_hypernet
    from bench.harness.comfy_server import ComfyServer
    from bench.harness.node_harness import subject_image
    from bench.harness.tiny_files import tiny_checkpoints

    server = ComfyServer(base)
    checkpoint = tiny_checkpoints()["sd15_tiny_clip.safetensors"]
    shutil.copy(checkpoint, server.base / "models" / "checkpoints" / checkpoint.name)
    write_tiny_hypernet(server.base / "models" / "hypersubject" / "tiny.safetensors")
    images = []
    for index in range(4):
        name = f"soak_subject_{index}.png"
        Image.fromarray((subject_image(10 + index, size=80)[0].numpy() * 255).astype("uint8")).save(
            server.base / "input" / name)
        images.append(name)
    return server.start(), images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=100)
    args = parser.parse_args()
    from bench.harness.comfy_runtime import import_comfy

    import_comfy()
    from bench.harness import workflow_files

    server, images = prepared_server(Path(tempfile.mkdtemp(prefix="hypersubject_soak_")))
    try:
        result = run_soak(server, workflow_files.tiny(workflow_files.api("hypersubject_one_image")), images, args.prompts)
    finally:
        server.stop()
    print(json.dumps({"prompts": result.prompts, "succeeded": result.succeeded, "seconds": round(result.seconds, 1),
                      "prompts_per_minute": round(result.per_minute, 1),
                      "server_rss_after_10_mb": round(result.rss_after_10_mb), "server_rss_end_mb": round(result.rss_end_mb),
                      "saved_loras": len(result.saved_loras)}, indent=1))


if __name__ == "__main__":
    main()
