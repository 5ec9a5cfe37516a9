"""The miniature world's table: the base model, the hypernet (plain CFG and HM-CFG), per-subject LoRA fine-tuning and
a hypernet trained without output regularization, on held-out subjects prompted into other contexts than their
reference image's.

    python -m bench.world.compare [--subjects 12] [--prompts 3] [--seeds 2] [--finetune-steps 50 200 800]

Sampled in-process through ComfyUI's nodes and this pack's: Load Subject Hypernet → Encode Subject → Predict LoRA →
Apply Predicted LoRA → KSampler (plain CFG) or HM-CFG KSampler; fine-tuned LoRAs go through ComfyUI's own LoRA
loader. Every row samples the same (subject, prompt, seed) triples. Writes results.json, table.md and grid.png.
"""
import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from .base.common import CACHE, REPO, import_comfy, setup_logging
from .base.evaluate import load_stock, save_grid, stock_loadable
from .cases import Case, make_cases
from .contexts import prompt
from .finetune import finetune_lora
from .metrics import context_alignment, diversity, identity_accuracy, subject_fidelity
from .node_sampler import CFG, SAMPLER, Row, Sampler
from .render import render

log = logging.getLogger(__name__)


def finetune_rows(sampler: Sampler, cases: list[Case], checkpoint: Path, rank: int, alpha: float,
                  steps: tuple[int, ...]) -> list[Row]:
    """One fine-tuning run per subject, snapshotted at each step count; one row per step count."""
    from train.base_model import FrozenBase

    base = FrozenBase.load(str(checkpoint), torch.device("cpu"))
    tuned = {}  # subject id → {steps: (LoRA, seconds)}
    for i, case in enumerate(cases):
        reference = torch.from_numpy(case.reference.astype(np.float32))
        snapshots = finetune_lora(base, reference, prompt(case.reference_context), rank, alpha, steps, seed=i)
        tuned[case.subject.id] = {n: (lora, seconds) for n, lora, seconds in snapshots}
        log.info("fine-tuned subject %d/%d", i + 1, len(cases))

    def personalize(case: Case, n: int):
        lora, seconds = tuned[case.subject.id][n]
        return sampler.stock_lora(lora), seconds

    return [sampler.row(f"fine-tuned LoRA, {n} steps", cases, lambda case, n=n: personalize(case, n)) for n in steps]


def scores(row: Row, cases: list[Case]) -> dict:
    """Identity accuracy (among the evaluated subjects), fidelity, context alignment, diversity, seconds."""
    flat = [(image, case.subject, context) for case, images in zip(cases, row.images)
            for context, seeds in zip(case.prompts, images) for image in seeds]
    images, subjects, contexts = zip(*flat)
    candidates = [case.subject for case in cases]
    alignments = [context_alignment(image, context) for image, context in zip(images, contexts)]
    return {"method": row.name,
            "identity_accuracy": identity_accuracy(images, subjects, candidates, contexts),
            "fidelity": float(np.mean([subject_fidelity(im, s, c)["fidelity"] for im, s, c in flat])),
            "context_alignment": float(np.mean([a["all"] for a in alignments])),
            "background_alignment": float(np.mean([a["background"] for a in alignments])),
            "diversity": float(np.mean([diversity(seeds) for images in row.images for seeds in images])),
            "seconds_per_subject": row.seconds}


def table(results: list[dict], chance: float) -> str:
    """The results as a Markdown table."""
    lines = ["| method | identity acc. | fidelity | context align. (all / background) | diversity | "
             "personalization time |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['method']} | {100 * r['identity_accuracy']:.0f} % | {r['fidelity']:.3f} | "
                     f"{100 * r['context_alignment']:.0f} % / {100 * r['background_alignment']:.0f} % | "
                     f"{r['diversity']:.3f} | {r['seconds_per_subject']:.3g} s |")
    lines.append(f"\nIdentity chance: {100 * chance:.1f} %.")
    return "\n".join(lines)


def grid(rows: dict[str, Row], cases: list[Case], columns: list[str], path: Path, n: int = 6) -> None:
    """reference | the rows' first images | ground truth, one line per case (first prompt, first seed)."""
    lines = []
    for i, case in enumerate(cases[:n]):
        lines += [case.reference, *(rows[name].images[i, 0, 0] for name in columns),
                  render(case.subject, case.prompts[0])]
    save_grid(np.stack(lines), len(columns) + 2, path)


def repo_relative(path: Path) -> str:
    """`path` relative to the repository when inside it, else as given."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def load_pack(work: Path) -> dict:
    """This pack loaded into the in-process ComfyUI (as custom_nodes/HyperSubject under `work`)."""
    sys.path[:0] = [str(REPO / "tests")]
    from node_harness import load_pack as load_pack_into

    (work / "custom_nodes").mkdir(parents=True, exist_ok=True)
    return load_pack_into(work / "custom_nodes")


def add_hypernets(hypernets: dict[str, Path], folder: Path) -> None:
    """Copy the hypernets into `folder` under the given names and register it as a hypersubject model folder."""
    import folder_paths

    folder.mkdir(parents=True, exist_ok=True)
    for name, path in hypernets.items():
        shutil.copyfile(path, folder / name)
    folder_paths.add_model_folder_path("hypersubject", str(folder))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=CACHE / "world_sd15.safetensors")
    parser.add_argument("--hypernet", type=Path, default=CACHE / "hyper" / "main" / "hypernet.safetensors")
    parser.add_argument("--hypernet-lambda0", type=Path, default=CACHE / "hyper" / "lambda0" / "hypernet.safetensors")
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--hm-cfg", type=float, nargs="+", default=[2.0, 5.0, 8.0], help="s_subject values (s_text 5)")
    parser.add_argument("--finetune-steps", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=CACHE / "compare")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    setup_logging(args.out / "compare.log")
    torch.set_num_threads(args.threads)
    import_comfy()
    import comfy.utils

    comfy.utils.set_progress_bar_enabled(False)
    run(load_pack(args.out / "work"), args)


def run(pack: dict, args: argparse.Namespace) -> list[dict]:
    """Every row of the table on the same cases; writes results.json, table.md and grid.png into args.out."""
    add_hypernets({"world.safetensors": args.hypernet, "world_lambda0.safetensors": args.hypernet_lambda0},
                  args.out / "work" / "hypernets")
    with torch.inference_mode():
        checkpoint = stock_loadable(args.ckpt, args.out / "work")
        model, clip, vae = load_stock(checkpoint)
    sampler = Sampler(pack, model, clip, vae, args.seeds)
    cases = make_cases(args.subjects, args.prompts, seed=0)

    def hypernet(name: str):
        return lambda case: sampler.hypernet_lora(name, case)

    rows = [sampler.row("base model (no subject)", cases, lambda case: (None, 0.0)),
            sampler.row("hypernet, plain CFG", cases, hypernet("world.safetensors")),
            *(sampler.row(f"hypernet, HM-CFG s_text {CFG:g} s_subject {s:g}", cases, hypernet("world.safetensors"),
                          (CFG, s)) for s in args.hm_cfg),
            sampler.row("hypernet λ = 0, plain CFG", cases, hypernet("world_lambda0.safetensors"))]
    config = pack["HyperSubjectLoader"].execute(hypernet_name="world.safetensors").args[0].net.config
    rows += finetune_rows(sampler, cases, checkpoint, config.rank, config.alpha, tuple(args.finetune_steps))

    results = [scores(row, cases) for row in rows]
    by_name = {row.name: row for row in rows}
    hm_middle = f"hypernet, HM-CFG s_text {CFG:g} s_subject {args.hm_cfg[len(args.hm_cfg) // 2]:g}"
    grid(by_name, cases, ["base model (no subject)", "hypernet, plain CFG", hm_middle], args.out / "grid.png")
    setup = {"subjects": args.subjects, "prompts": args.prompts, "seeds": args.seeds, "cfg": CFG, **SAMPLER,
             **{name: repo_relative(getattr(args, name)) for name in ("hypernet", "hypernet_lambda0", "ckpt")}}
    (args.out / "results.json").write_text(json.dumps({"setup": setup, "rows": results}, indent=2))
    (args.out / "table.md").write_text(table(results, 1 / args.subjects) + "\n")
    log.info("\n%s\nwrote %s", table(results, 1 / args.subjects), args.out)
    return results


if __name__ == "__main__":
    main()
