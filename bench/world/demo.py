"""The README's demo: the miniature world's base model and hypernet in a real ComfyUI server, driven over its HTTP API
the way a batch user drives it.

    make demo          # creates .venv if missing, then runs: .venv/bin/python -m bench.world.demo

Starts ComfyUI on 127.0.0.1 (a free port, its own base directory), puts the committed world checkpoint (its CLIP-L
regenerated from the recorded seed) and hypernet into its model folders, uploads reference images of held-out toys,
queues the shipped one-image workflow (HM-CFG KSampler) for each with prompts that name other backgrounds, and writes
the images and a grid: reference | (sample, ground truth) per prompt. Stops the server by its PID.
"""
import argparse
import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .base.build import WORLD_CFG
from .base.common import CACHE, REPO, import_comfy
from .base.evaluate import save_grid, stock_loadable
from .cases import make_cases
from .contexts import prompt
from .dataset import save_png
from .render import render

MODELS = Path(__file__).resolve().parent / "models"
BASE_MODEL = MODELS / "world_sd15_noclip.safetensors"
HYPERNET = MODELS / "world_hypernet.safetensors"
WORKFLOW = REPO / "workflows" / "api" / "hypersubject_one_image.json"


def demo_graph(graph: dict, checkpoint: str, hypernet: str, image: str, text: str, seed: int) -> dict:
    """The shipped workflow with the world's files, 64 px latents, the world's guidance scale, this subject image,
    prompt and seed."""
    from bench.harness.workflow_files import queue_batch

    graph = queue_batch().personalize(graph, image, text, seed)
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        elif node["class_type"] == "HyperSubjectLoader":
            inputs["hypernet_name"] = hypernet
        elif node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif node["class_type"] == "HMCFGKSampler":
            inputs["s_text"] = WORLD_CFG
        elif node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = "hypersubject/world_demo"
    return graph


def prepare_base_directory(base: Path) -> None:
    """models/checkpoints/world_sd15.safetensors (with CLIP-L) and models/hypersubject/world.safetensors."""
    checkpoints, hypernets = base / "models" / "checkpoints", base / "models" / "hypersubject"
    for folder in (checkpoints, hypernets):
        folder.mkdir(parents=True, exist_ok=True)
    full = checkpoints / "world_sd15.safetensors"
    if not full.is_file() or full.stat().st_mtime < BASE_MODEL.stat().st_mtime:
        import_comfy()  # the CLIP-L is rebuilt with ComfyUI's own text model class
        built = stock_loadable(BASE_MODEL, checkpoints)  # the committed file itself when it carries CLIP-L
        if built == BASE_MODEL:
            shutil.copyfile(BASE_MODEL, full)  # never move the committed file
        else:
            built.replace(full)
    shutil.copyfile(HYPERNET, hypernets / "world.safetensors")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=4, help="held-out toys")
    parser.add_argument("--prompts", type=int, default=3, help="prompts per toy, each naming another background")
    parser.add_argument("--out", type=Path, default=REPO / "demo_output")
    args = parser.parse_args(argv)
    started = time.monotonic()
    from bench.harness.comfy_server import ComfyServer, execution_error
    from bench.harness.workflow_files import queue_batch

    base = CACHE / "demo" / "comfyui"
    prepare_base_directory(base)
    (args.out / "references").mkdir(parents=True, exist_ok=True)
    cases = make_cases(args.subjects, args.prompts, seed=1)
    graph = json.loads(WORKFLOW.read_text())
    server = ComfyServer(base).start()
    print(f"ComfyUI with HyperSubject at {server.url} (log: {server.log_path})", flush=True)
    lines, failures = [], 0
    try:
        for i, case in enumerate(cases):
            reference = args.out / "references" / f"toy_{case.subject.id}.png"
            save_png(case.reference, reference)
            uploaded = queue_batch().upload_image(server.url, reference)
            line = [case.reference]
            for j, context in enumerate(case.prompts):
                entry = server.run(demo_graph(graph, "world_sd15.safetensors", "world.safetensors", uploaded,
                                              prompt(context), seed=100 * i + j))
                if execution_error(entry):
                    failures += 1
                    print(f"failed: {execution_error(entry).get('exception_message')}", file=sys.stderr)
                    line += [np.zeros((64, 64, 3), np.float32)] * 2
                    continue
                (item,) = [item for output in entry["outputs"].values() for item in output.get("images", [])]
                sample = Image.open(io.BytesIO(server.output_bytes(item))).convert("RGB")
                sample.save(args.out / f"toy_{case.subject.id}_{j}.png")
                line += [np.asarray(sample, np.float32) / 255.0, render(case.subject, context)]
                print(f"toy {case.subject.id}: '{prompt(context)}' → {args.out / f'toy_{case.subject.id}_{j}.png'}",
                      flush=True)
            lines.append(line)
    finally:
        server.stop()
    save_grid(np.stack([image for line in lines for image in line]), 1 + 2 * args.prompts, args.out / "grid.png")
    print(f"grid (reference | sample, ground truth per prompt): {args.out / 'grid.png'}; "
          f"{failures} failed; {time.monotonic() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
