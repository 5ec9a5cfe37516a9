"""HM-CFG step time as a ratio to a plain CFG step on the same base model, and the memory it adds.

    .venv/bin/python -m bench.hmcfg_speed [--repeats 15] [--batch 1] [--size 64]

One model evaluation (one sampler step of euler) at a fixed sigma, median of `repeats`, for: plain CFG (stock
CFGGuider), HM-CFG fast path (Apply Predicted LoRA output), HM-CFG general path (the same LoRA through the stock
LoraLoader). The FLOP floor of the fast path is 1.5× (three batch rows instead of two).
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests")]
from comfy_runtime import import_comfy  # noqa: E402

import_comfy()
import comfy.samplers  # noqa: E402
import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402

from node_harness import conditioning, load_pack, model_folder, one_step_denoised, predicted_lora, run  # noqa: E402
from tiny_files import tiny_checkpoints  # noqa: E402

from bench.measure import median_seconds, rss_mb  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (latent = size/8)")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    work = Path(tempfile.mkdtemp())
    pack = load_pack(work)
    from bench.tiny_checkpoints import write_tiny_hypernet

    folder_paths.add_model_folder_path("hypersubject", str(work))
    write_tiny_hypernet(work / "tiny.safetensors")
    base, clip, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoints()["sd15_tiny_clip.safetensors"]))[:3]
    positive, negative = conditioning(clip, "a toy on a blue background"), conditioning(clip, "")
    rss_base = rss_mb()
    lora = predicted_lora(pack)
    (fast_model,) = run(pack["HyperSubjectApplyLoRA"], model=base, subject_lora=lora, strength=1.0)
    with model_folder("loras", work):  # the saved LoRA stays in this run's own folder, not in ComfyUI's models/loras/
        (name,) = run(pack["HyperSubjectSaveLoRA"], subject_lora=lora, name="bench", subfolder="")
        (general_model,) = nodes.LoraLoaderModelOnly().load_lora_model_only(base, name, 1.0)
    shape = (args.batch, 4, args.size // 8, args.size // 8)

    plain = comfy.samplers.CFGGuider(base)
    plain.set_conds(positive, negative)
    plain.set_cfg(5.0)

    def hmcfg(personalized):
        (guider,) = run(pack["HMCFGGuider"], base_model=base, personalized_model=personalized, positive=positive,
                        negative=negative, s_text=5.0, s_subject=3.0, start_percent=0.0, end_percent=1.0)
        return guider

    fast, general = hmcfg(fast_model), hmcfg(general_model)
    assert fast.fast and not general.fast
    timings = {label: median_seconds(lambda g=guider: one_step_denoised(g, 1.0, shape), args.repeats)
               for label, guider in (("plain CFG", plain), ("HM-CFG fast path", fast), ("HM-CFG general path", general))}
    factor_bytes = sum(t.numel() * t.element_size() for t in (*lora.lora.down.values(), *lora.lora.up.values()))
    unet_bytes = sum(p.numel() * p.element_size() for p in base.model.diffusion_model.parameters())
    print(f"tiny SD1.5-family UNet, {args.size}×{args.size} px, batch {args.batch}, median of {args.repeats}, "
          f"{torch.get_num_threads()} threads")
    print("| guidance | ms per step | ratio to plain CFG |\n|---|---|---|")
    for label, seconds in timings.items():
        print(f"| {label} | {seconds * 1000:.1f} | {seconds / timings['plain CFG']:.2f}× |")
    print(f"LoRA factors: {factor_bytes / 1e6:.3f} MB; UNet weights: {unet_bytes / 1e6:.1f} MB; "
          f"resident memory growth after predicting, applying, saving, loading the LoRA and running HM-CFG: "
          f"{rss_mb() - rss_base:.1f} MB")


if __name__ == "__main__":
    main()
