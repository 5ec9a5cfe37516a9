"""Queue N subject images × M prompts through a running ComfyUI's HTTP API and collect the images.

    python workflows/queue_batch.py --images a.png b.png --prompt "a toy on a green background" \
        --prompt "a toy on a grey background, small" --out results/ [--server http://127.0.0.1:8188]

Uses the API twin of a shipped workflow (default: one image → HM-CFG). Standard library only.
"""
import argparse
import itertools
import json
import mimetypes
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

DEFAULT_WORKFLOW = Path(__file__).parent / "api" / "hypersubject_one_image.json"


def request(server: str, path: str, data: bytes | None = None, headers: dict | None = None):
    with urllib.request.urlopen(urllib.request.Request(server + path, data=data, headers=headers or {}),
                                timeout=120) as response:
        body = response.read()
        return json.loads(body) if response.headers.get_content_type() == "application/json" else body


def upload_image(server: str, path: Path) -> str:
    """POST /upload/image (multipart); the name ComfyUI stored it under."""
    boundary = uuid.uuid4().hex
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + path.read_bytes() + (
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
            f"--{boundary}--\r\n").encode()
    answer = request(server, "/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return "/".join(filter(None, [answer.get("subfolder"), answer["name"]]))


def personalize(graph: dict, image: str, prompt: str, seed: int) -> dict:
    """A copy of the graph with this subject image, prompt and seed."""
    graph = json.loads(json.dumps(graph))
    for node in graph.values():
        inputs, title = node["inputs"], node.get("_meta", {}).get("title", "")
        if node["class_type"] == "LoadImage":
            inputs["image"] = image
        elif node["class_type"] == "CLIPTextEncode" and title == "Prompt":
            inputs["text"] = prompt
        for key in ("seed", "noise_seed"):
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = seed
    return graph


def wait_and_collect(server: str, prompt_ids: list[str], out: Path) -> int:
    """Poll /history until every prompt ended; save its images into `out`; the number of failed prompts."""
    pending, failed = list(prompt_ids), 0
    while pending:
        for prompt_id in list(pending):
            entry = request(server, f"/history/{prompt_id}").get(prompt_id)
            if entry is None:
                continue
            pending.remove(prompt_id)
            if entry["status"].get("status_str") != "success":
                failed += 1
                print(f"failed: {prompt_id}: {entry['status'].get('messages', [])[-1:]}", file=sys.stderr)
            for output in entry["outputs"].values():
                for item in output.get("images", []):
                    query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
                    (out / item["filename"]).write_bytes(request(server, f"/view?{query}"))
            print(f"{len(prompt_ids) - len(pending)}/{len(prompt_ids)} done", flush=True)
        time.sleep(0.2)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="http://127.0.0.1:8188")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW, help="an API-format workflow file")
    parser.add_argument("--images", type=Path, nargs="+", required=True, help="one image per subject")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=Path("hypersubject_batch"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    graph = json.loads(args.workflow.read_text())
    uploaded = [upload_image(args.server, path) for path in args.images]
    prompt_ids = []
    for image, prompt, seed in itertools.product(uploaded, args.prompt, args.seeds):
        body = json.dumps({"prompt": personalize(graph, image, prompt, seed), "client_id": "hypersubject-batch"})
        prompt_ids.append(request(args.server, "/prompt", body.encode(), {"Content-Type": "application/json"})["prompt_id"])
    print(f"queued {len(prompt_ids)} prompts", flush=True)
    failed = wait_and_collect(args.server, prompt_ids, args.out)
    print(f"images in {args.out.resolve()}; {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
