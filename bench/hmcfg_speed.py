"""HM-CFG step time as a ratio to a plain CFG step on the same base model, and the memory it adds.

    .venv/bin/python -m bench.hmcfg_speed [--unet tiny|sd15|sdxl] [--size 64] [--batch 1] [--rounds 7]

One model evaluation (one sampler step of euler) at a fixed sigma for: plain CFG (stock CFGGuider); the HM-CFG fast
path, with the personalized MODEL from the stock LoraLoader and a saved rank-4 LoRA on every attention projection
(what Save Predicted LoRA writes); the HM-CFG general path, with the same ΔW as full-weight patches (as a merged
fine-tune would be), which switches weights twice per step. The kinds are interleaved round by round
(`bench.measure.interleaved`); the ratios are medians of per-round ratios with their range. The FLOP floor of the
fast path is 1.5× (three batch rows instead of two). Full-size UNets have random weights (`bench.full_size`) and
random text conditioning.
"""
import argparse
import os
import tempfile
from pathlib import Path

import torch

from .full_size import UNETS, load_unet, random_conditioning
from .harness.comfy_runtime import import_comfy
from .measure import interleaved, rss_mb

RANK = 4


def random_lora(unet, seed: int):
    """A rank-4 LoRA on every attention projection, factors at the scale a trained hypernet predicts."""
    from hypernet import PredictedLoRA, family_targets

    generator = torch.Generator().manual_seed(seed)
    family, targets = family_targets(unet)
    down = {t.name: torch.randn(1, RANK, t.in_features, generator=generator) * 0.02 for t in targets}
    up = {t.name: torch.randn(1, t.out_features, RANK, generator=generator) * 0.02 for t in targets}
    return PredictedLoRA(targets, down, up, RANK, float(RANK), family)


def personalized_models(base, lora, folder: Path):
    """(through LoraLoader from a saved file: the fast path, the same ΔW as full-weight patches: the general path)."""
    import nodes
    import safetensors.torch

    from hypernet import to_lora_state_dict

    from .harness.node_harness import model_folder

    safetensors.torch.save_file(to_lora_state_dict(lora), str(folder / "subject.safetensors"))
    with model_folder("loras", folder):
        (fast,) = nodes.LoraLoaderModelOnly().load_lora_model_only(base, "subject.safetensors", 1.0)
    general = base.clone()
    general.add_patches({f"{t.name}.weight": ("diff", (lora.delta(t.name),)) for t in lora.targets})
    return fast, general


def guiders(pack, base, fast_model, general_model, positive, negative) -> dict:
    """Plain CFG and the HM-CFG Guider node's guider for each personalized MODEL."""
    import comfy.samplers

    from .harness.node_harness import run

    plain = comfy.samplers.CFGGuider(base)
    plain.set_conds(positive, negative)
    plain.set_cfg(5.0)
    made = {"plain CFG": plain}
    for label, personalized in (("HM-CFG fast path", fast_model), ("HM-CFG general path", general_model)):
        (made[label],) = run(pack["HMCFGGuider"], base_model=base, personalized_model=personalized, positive=positive,
                             negative=negative, s_text=5.0, s_subject=3.0, start_percent=0.0, end_percent=1.0)
    assert made["HM-CFG fast path"].path == "fast" and made["HM-CFG general path"].path == "general"
    return made


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=sorted(UNETS), default="tiny")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (latent = size/8)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    import_comfy()
    from .harness.node_harness import load_pack, one_step_denoised

    torch.set_num_threads(os.cpu_count())
    base, context_dim, pooled_dim = load_unet(args.unet)
    positive, negative = (random_conditioning(context_dim, pooled_dim, seed) for seed in (1, 2))
    lora = random_lora(base.model.diffusion_model, seed=3)
    shape = (args.batch, 4, args.size // 8, args.size // 8)
    with tempfile.TemporaryDirectory() as folder:
        pack = load_pack(Path(folder))
        fast_model, general_model = personalized_models(base, lora, Path(folder))
        made = guiders(pack, base, fast_model, general_model, positive, negative)
        rss_before = rss_mb()
        steps = {label: (lambda g=guider: one_step_denoised(g, 1.0, shape)) for label, guider in made.items()}
        timings = interleaved(steps, args.rounds, reference="plain CFG")
    unet_mb = sum(p.numel() * p.element_size() for p in base.model.diffusion_model.parameters()) / 1e6
    factor_mb = sum(t.numel() * t.element_size() for t in (*lora.down.values(), *lora.up.values())) / 1e6
    print(f"{args.unet} UNet ({unet_mb:,.0f} MB of weights, {len(lora.targets)} LoRA targets), "
          f"{args.size}×{args.size} px, batch {args.batch}, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads")
    print("| guidance | ms per step (median) | ratio to plain CFG (median, range) |\n|---|---|---|")
    for label, timing in timings.items():
        print(f"| {label} | {timing.seconds * 1000:,.1f} | {timing.ratio_text()} |")
    print(f"LoRA factors: {factor_mb:.2f} MB; resident memory growth while the three kinds ran: "
          f"{rss_mb() - rss_before:,.0f} MB (the general path keeps backups of the weights it patches)")


if __name__ == "__main__":
    main()
