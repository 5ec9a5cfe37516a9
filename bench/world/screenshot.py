"""The README's screenshot: the shipped one-image workflow in the real ComfyUI front end, after it personalized a
held-out toy of the miniature world.

    .venv/bin/python -m bench.world.screenshot [--out workflows/hypersubject_one_image.jpg]

Starts ComfyUI on 127.0.0.1 (a free port, its own base directory) with the committed world checkpoint and hypernet
(as the demo does), uploads one held-out toy's reference image, opens the front end in headless chromium
(bench/harness/browser.py), loads workflows/hypersubject_one_image.json and sets its widgets to the demo's graph (world files,
this image, a prompt that names another background, 64 px), clicks Run, waits for the image in Save Image, fits the
whole graph into view and saves it as a JPEG. Closes the browser and stops the server by its PID.
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .base.common import CACHE, REPO, setup_logging
from .cases import make_cases
from .contexts import prompt
from .dataset import save_png
from .demo import WORKFLOW, demo_graph, prepare_base_directory

log = logging.getLogger(__name__)

NAME = "hypersubject_one_image"
VIEWPORT = (1400, 700)  # the graph is about 2.4:1, so the width decides the zoom (about 0.59)
MARGIN = 24  # graph units around the nodes, room for the source badges above the titles
# Nothing but the graph: focus mode hides the menus and the side bar, two settings the fps corner and the zoom
# buttons. The view is then fitted to the nodes and their titles exactly.
FIT = """async (margin) => {
    await app.extensionManager.command.execute('Workspace.ToggleFocusMode');
    await app.extensionManager.setting.set('Comfy.Graph.CanvasInfo', false);
    await app.extensionManager.setting.set('Comfy.Graph.CanvasMenu', false);
    app.extensionManager.toast?.removeAll?.();
    await new Promise(r => setTimeout(r, 300));  // the canvas takes the freed space
    const title = LiteGraph.NODE_TITLE_HEIGHT, nodes = app.graph.nodes;
    const x0 = Math.min(...nodes.map(n => n.pos[0])) - margin;
    const y0 = Math.min(...nodes.map(n => n.pos[1] - title)) - margin;
    const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])) + margin;
    const y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1])) + margin;
    app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0], {zoom: 1});
    app.canvas.setDirty(true, true);
    const [left, top] = app.canvas.ds.convertOffsetToCanvas([x0, y0]);
    const [right, bottom] = app.canvas.ds.convertOffsetToCanvas([x1, y1]);
    const box = app.canvas.canvas.getBoundingClientRect();
    return {x: box.left + left, y: box.top + top, width: right - left, height: bottom - top}; }"""


def node_id(graph: dict, class_type: str) -> str:
    """The id of the graph's one node of this type."""
    (found,) = [i for i, node in graph.items() if node["class_type"] == class_type]
    return found


def screenshot(front_end, out: Path, quality: int) -> None:
    """The whole graph, fitted to the page and clipped to it, as a JPEG."""
    clip = front_end.page.evaluate(FIT, MARGIN)
    width, height = VIEWPORT
    clip = {"x": max(0, clip["x"]), "y": max(0, clip["y"]),
            "width": min(width, clip["width"]), "height": min(height, clip["height"])}
    front_end.page.mouse.move(clip["x"] + 2, clip["y"] + 2)  # empty canvas: no hover highlight or tooltip
    front_end.page.wait_for_timeout(500)
    out.parent.mkdir(parents=True, exist_ok=True)
    front_end.page.screenshot(path=str(out), type="jpeg", quality=quality, clip=clip)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "workflows" / f"{NAME}.jpg")
    parser.add_argument("--seed", type=int, default=1, help="draws the held-out toy and the prompt; the sampler seed")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
    args = parser.parse_args(argv)
    setup_logging()
    started = time.monotonic()
    from bench.harness import workflow_files
    from bench.harness.browser import FrontEnd
    from bench.harness.comfy_server import ComfyServer

    base = CACHE / "screenshot" / "comfyui"
    prepare_base_directory(base)
    (case,) = make_cases(1, 1, seed=args.seed)
    text = prompt(case.prompts[0])
    reference = base.parent / f"toy_{case.subject.id}.png"
    save_png(case.reference, reference)
    server = ComfyServer(base).start()
    front_end = None
    try:
        log.info("ComfyUI at %s (log: %s)", server.url, server.log_path)
        graph = demo_graph(json.loads(WORKFLOW.read_text()), "world_sd15.safetensors", "world.safetensors",
                           workflow_files.queue_batch().upload_image(server.url, reference), text, seed=args.seed)
        front_end = FrontEnd(server, viewport=VIEWPORT)
        front_end.load(workflow_files.ui(NAME), NAME)
        front_end.set_widgets(graph)
        queued = {i: node["inputs"] for i, node in front_end.prompt().items()}
        if queued != {i: node["inputs"] for i, node in graph.items()}:
            raise RuntimeError(f"the front end would queue {queued}, not the demo's graph {graph}")
        front_end.wait_for_image(node_id(graph, "LoadImage"))
        log.info("toy %s (%s and %s) → '%s'", case.subject.id, case.subject.body, case.subject.second, text)
        outcome = front_end.run()
        if outcome != "execution_success":
            raise RuntimeError(f"the workflow ended with {outcome}; see {server.log_path}")
        front_end.wait_for_image(node_id(graph, "SaveImage"))
        screenshot(front_end, args.out, args.quality)
        for error in front_end.errors:
            log.warning("front end console: %s", error)
    finally:
        if front_end is not None:
            front_end.close()
        server.stop()
    log.info("%s (%.0f KB) in %.0f s", args.out, args.out.stat().st_size / 1024, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
