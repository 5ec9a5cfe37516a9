"""The miniature world's table: the ladder from the metric itself to the method, on held-out subjects prompted into
other contexts than their reference image's.

    python -m bench.world.compare [--seed 0] [--subjects 24] [--prompts 3] [--seeds 2] [--finetune-steps 50 200 800]

Rows: exact renders (the metric), renders through the world VAE, the base model told the subject's identity in words
(the text oracle) and told only the class word, per-subject LoRA fine-tuning, the hypernet with plain CFG and with
HM-CFG, the longest fine-tune with HM-CFG, and the hypernet trained without output regularization. Sampled in-process
through ComfyUI's nodes and this pack's: Load Subject Hypernet → Encode Subject → Predict LoRA → Apply Predicted LoRA →
KSampler (plain CFG) or HM-CFG KSampler; fine-tuned LoRAs go through ComfyUI's own LoRA loader. Every row shows the same
(subject, prompt, seed) triples, drawn from --seed. Writes results.json, table.md and grid.png.
"""
import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import safetensors
import safetensors.torch
import torch

from hypernet import to_lora_state_dict, write_atomic

from .bars import (CLASS_LEVEL, EXACT, HYPERNET, ORACLE, THROUGH_VAE, bar_report, finetuned, finetuned_hm_cfg,
                   hypernet_hm_cfg)
from .base.build import WORLD_CFG
from .base.common import CACHE, REPO, import_comfy, psnr, setup_logging
from .base.evaluate import load_stock, save_grid, stock_loadable, vae_round_trip
from .cases import Case, make_cases
from .contexts import prompt
from .metrics import context_alignment, diversity, identity_accuracy, nearest_subject, subject_fidelity
from .node_sampler import SAMPLER, Row, Sampler
from .render import render
from .subjects import ATTRIBUTES, all_subjects, split_subjects

log = logging.getLogger(__name__)
CONTEXT_ATTRIBUTES = ("background", "position", "size", "lighting")


def render_rows(sampler: Sampler, cases: list[Case]) -> tuple[list[Row], float]:
    """The exact renders of every (case, prompt), repeated per seed, and the same through VAEEncode → VAEDecode;
    and the round trip's PSNR."""
    exact = np.asarray([[[render(case.subject, context)] * sampler.seeds for context in case.prompts]
                        for case in cases])
    flat = torch.from_numpy(exact.reshape(-1, *exact.shape[-3:]))
    with torch.inference_mode():
        decoded = vae_round_trip(sampler.vae, flat.permute(0, 3, 1, 2))
    return ([Row(EXACT, exact, 0.0), Row(THROUGH_VAE, decoded.reshape(exact.shape), 0.0)],
            psnr(torch.from_numpy(decoded), flat))


def finetune_rows(sampler: Sampler, cases: list[Case], checkpoint: Path, rank: int, alpha: float,
                  steps: tuple[int, ...], hm_cfg: list[float], cache: Path) -> list[Row]:
    """One fine-tuning run per subject, snapshotted at each step count; one row per step count, and the longest
    fine-tune with HM-CFG at each s_subject."""
    tuned = finetuned_loras(cases, checkpoint, rank, alpha, steps, cache)

    def personalize(case: Case, n: int):
        lora, seconds = tuned[case.subject.id][n]
        return sampler.stock_lora(lora), seconds

    longest = max(steps)
    return ([sampler.row(finetuned(n), cases, lambda case, n=n: personalize(case, n)) for n in steps]
            + [sampler.row(finetuned_hm_cfg(longest, s), cases, lambda case: personalize(case, longest),
                           (sampler.cfg, s))
               for s in hm_cfg])


def finetuned_loras(cases: list[Case], checkpoint: Path, rank: int, alpha: float, steps: tuple[int, ...],
                    cache: Path) -> dict[int, dict[int, tuple[dict, float]]]:
    """subject id → {steps: (LoRA state dict, seconds)}; each subject's run is cached in `cache` (the longest part of
    the table, so it can be computed ahead, and a rerun with other rows reuses it)."""
    from train.base_model import FrozenBase
    from train.finetune import finetune_lora

    base, tuned = None, {}
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()  # a retrained model keeps the path and the size
    for i, case in enumerate(cases):
        path = cache / f"subject_{case.subject.id}.safetensors"
        key = {"checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": digest,
               "reference_context": case.reference_context.to_dict(), "rank": rank, "alpha": alpha,
               "steps": list(steps), "seed": i}
        tuned[case.subject.id] = read_finetuned(path, key)
        if tuned[case.subject.id] is None:
            base = base or FrozenBase.load(str(checkpoint), torch.device("cpu"))
            reference = torch.from_numpy(case.reference.astype(np.float32))
            snapshots = finetune_lora(base, reference[None], [prompt(case.reference_context)], rank, alpha, steps,
                                      seed=i)
            tuned[case.subject.id] = {n: (to_lora_state_dict(lora), seconds) for n, lora, seconds in snapshots}
            write_finetuned(path, key, tuned[case.subject.id])
        log.info("fine-tuned subject %d/%d", i + 1, len(cases))
    return tuned


def read_finetuned(path: Path, key: dict) -> dict[int, tuple[dict, float]] | None:
    """The cached snapshots of one fine-tuning run, or None when absent or made with other settings."""
    if not path.is_file():
        return None
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        if json.loads(metadata["key"]) != key:
            return None
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    seconds = json.loads(metadata["seconds"])
    return {int(n): ({name.split("/", 1)[1]: t for name, t in tensors.items() if name.startswith(f"{n}/")}, spent)
            for n, spent in seconds.items()}


def write_finetuned(path: Path, key: dict, snapshots: dict[int, tuple[dict, float]]) -> None:
    """One fine-tuning run's snapshots as one safetensors file, its settings and timings as metadata."""
    tensors = {f"{n}/{name}": t.contiguous() for n, (state, _) in snapshots.items() for name, t in state.items()}
    metadata = {"key": json.dumps(key), "seconds": json.dumps({n: spent for n, (_, spent) in snapshots.items()})}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, safetensors.torch.save(tensors, metadata=metadata))


def scores(row: Row, cases: list[Case]) -> dict:
    """Identity accuracy (nearest of all held-out subjects), per-attribute identity (nearest of all subjects), fidelity,
    context alignment (all and per attribute), diversity across seeds, personalization seconds per subject."""
    flat = [(image, case.subject, context) for case, images in zip(cases, row.images)
            for context, seeds in zip(case.prompts, images) for image in seeds]
    images, subjects, contexts = zip(*flat)
    nearest = [nearest_subject(image, all_subjects(), context) for image, context in zip(images, contexts)]
    alignments = [context_alignment(image, context) for image, context in zip(images, contexts)]
    return {"method": row.name,
            "identity_accuracy": identity_accuracy(images, subjects, split_subjects()[1], contexts),
            **{f"identity_{name}": float(np.mean([getattr(n, name) == getattr(s, name)
                                                  for n, s in zip(nearest, subjects)])) for name in ATTRIBUTES},
            "fidelity": float(np.mean([subject_fidelity(im, s, c)["fidelity"] for im, s, c in flat])),
            "context_alignment": float(np.mean([a["all"] for a in alignments])),
            **{f"context_{name}": float(np.mean([a[name] for a in alignments])) for name in CONTEXT_ATTRIBUTES},
            "diversity": float(np.mean([diversity(seeds) for images in row.images for seeds in images])),
            "seconds_per_subject": row.seconds}


def table(results: list[dict], chance: float, vae_psnr: float) -> str:
    """The results as a Markdown table."""
    lines = ["| method | identity acc. | body / second colour | fidelity | context align. | background / position / "
             "size / lighting | diversity | personalization time |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        colours = " / ".join(f"{100 * r[f'identity_{name}']:.0f}" for name in ATTRIBUTES)
        context = " / ".join(f"{100 * r[f'context_{name}']:.0f}" for name in CONTEXT_ATTRIBUTES)
        lines.append(f"| {r['method']} | {100 * r['identity_accuracy']:.0f} % | {colours} % | {r['fidelity']:.3f} | "
                     f"{100 * r['context_alignment']:.0f} % | {context} % | {r['diversity']:.3f} | "
                     f"{r['seconds_per_subject']:.3g} s |")
    lines.append(f"\nIdentity chance: {100 * chance:.1f} % (nearest of the {round(1 / chance)} held-out subjects); "
                 f"body / second colour: "
                 f"the nearest of all {len(all_subjects())} subjects has the right colour. VAE round trip: "
                 f"{vae_psnr:.1f} dB PSNR.")
    return "\n".join(lines)


def grid(rows: dict[str, Row], cases: list[Case], columns: list[str], path: Path, n: int = 8) -> None:
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
    from bench.harness.node_harness import load_pack as load_pack_into

    custom_nodes = work / "custom_nodes"
    shutil.rmtree(custom_nodes, ignore_errors=True)  # an earlier run's link to the pack (rmtree never follows it)
    custom_nodes.mkdir(parents=True)
    return load_pack_into(custom_nodes)


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
    parser.add_argument("--hypernet-lambda0", type=Path, default=None,
                        help="the same hypernet trained with reg_lambda 0 (its row is left out without it)")
    parser.add_argument("--seed", type=int, default=0, help="draws the cases: subjects, reference contexts, prompts")
    parser.add_argument("--subjects", type=int, default=8, help="held-out subjects to show (at most 24; identity is "
                                                                "always the nearest of all 24)")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--cfg", type=float, default=WORLD_CFG, help="KSampler cfg and HM-CFG s_text of every row")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--hm-cfg", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0],
                        help="s_subject values (s_text: --cfg)")
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
    hypernets = {name: path for name, path in (("world.safetensors", args.hypernet),
                                               ("world_lambda0.safetensors", args.hypernet_lambda0)) if path}
    add_hypernets(hypernets, args.out / "work" / "hypernets")
    with torch.inference_mode():
        checkpoint = stock_loadable(args.ckpt, args.out / "work")
        model, clip, vae = load_stock(checkpoint)
    sampler = Sampler(pack, model, clip, vae, args.seeds, args.cfg)
    cases = make_cases(args.subjects, args.prompts, seed=args.seed)

    def hypernet(name: str):
        return lambda case: sampler.hypernet_lora(name, case)

    rows, vae_psnr = render_rows(sampler, cases)
    rows += [sampler.row(ORACLE, cases, lambda case: (None, 0.0), described=True),
             sampler.row(CLASS_LEVEL, cases, lambda case: (None, 0.0))]
    config = pack["HyperSubjectLoader"].execute(hypernet_name="world.safetensors").args[0].net.config
    rows += finetune_rows(sampler, cases, checkpoint, config.rank, config.alpha, tuple(args.finetune_steps),
                          args.hm_cfg, args.out / "finetuned")
    for name in hypernets:
        sampler.hypernet_lora(name, cases[0])  # untimed: a first call's one-time costs are no subject's personalization
    rows += [sampler.row(HYPERNET, cases, hypernet("world.safetensors")),
             *(sampler.row(hypernet_hm_cfg(s), cases, hypernet("world.safetensors"), (sampler.cfg, s))
               for s in args.hm_cfg)]
    if args.hypernet_lambda0:
        rows.append(sampler.row("hypernet λ = 0, plain CFG", cases, hypernet("world_lambda0.safetensors")))

    results = [scores(row, cases) for row in rows]
    by_name = {row.name: row for row in rows}
    middle = sorted(args.finetune_steps)[len(args.finetune_steps) // 2]
    grid(by_name, cases, [ORACLE, CLASS_LEVEL, finetuned(middle), HYPERNET, hypernet_hm_cfg(max(args.hm_cfg))],
         args.out / "grid.png")
    setup = {"seed": args.seed, "subjects": args.subjects, "prompts": args.prompts, "seeds": args.seeds,
             "cfg": args.cfg, "s_text": args.cfg, **SAMPLER, "vae_psnr": vae_psnr,
             **{name: repo_relative(getattr(args, name)) for name in ("hypernet", "hypernet_lambda0", "ckpt")
                if getattr(args, name)}}
    bars = bar_report(results, args.finetune_steps, args.hm_cfg)
    (args.out / "results.json").write_text(json.dumps({"setup": setup, "rows": results, "bars": bars}, indent=2))
    text = table(results, 1 / len(split_subjects()[1]), vae_psnr) + "\n\n" + "\n".join(f"- {line}" for line in bars) + "\n"
    (args.out / "table.md").write_text(text)
    log.info("\n%s\nwrote %s", text, args.out)
    return results


if __name__ == "__main__":
    main()
