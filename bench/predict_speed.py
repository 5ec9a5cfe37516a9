"""Personalization cost in units of one sampler step of the model it personalizes, and the predicted LoRA's size.

    .venv/bin/python -m bench.predict_speed [--unet tiny|sd15|sdxl] [--size 512] [--rounds 7] [--clip-vision]

Personalization: the pack's own Encode Subject, Predict LoRA and Apply Predicted LoRA nodes on one 512×512 subject
image, with a hypernet (random weights) that reads the embedded CNN or a CLIP vision ViT-L/14 (random weights, which
cost what trained ones do) and predicts a rank-4 LoRA for every attention projection of the UNet. One step: one
plain CFG evaluation of the UNet (cond and uncond, batch 2) at --size. The kinds are interleaved round by round
(`bench.measure.interleaved`); the ratios are medians of per-round ratios with their range. Full-size UNets have
random weights (`bench.full_size`).
"""
import argparse
import os
import tempfile
from pathlib import Path

import torch

from .full_size import UNETS, load_unet
from .harness.comfy_runtime import import_comfy
from .measure import interleaved

RANK = 4
HYPERNET_FOLDER = "hypersubject"  # the pack's models/ folder, registered when it loads


def cfg_step(unet, name: str, size: int):
    """One CFG evaluation of `unet`: a batch of two latents at `size` px with random text conditioning."""
    config = UNETS[name]
    x, t = torch.randn(2, 4, size // 8, size // 8), torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, config["context_dim"])
    y = torch.randn(2, config["adm_in_channels"]) if config.get("adm_in_channels") else None
    return lambda: unet(x, t, context=context, y=y)


def personalization(pack: dict, base, hypernet_name: str, image: torch.Tensor, clip_vision=None):
    """Encode Subject → Predict LoRA → Apply Predicted LoRA; the hypernet is loaded once beforehand, as the loader
    node caches it."""
    from .harness.node_harness import run

    (loaded,) = run(pack["HyperSubjectLoader"], hypernet_name=hypernet_name)

    def personalize():
        subject, _ = run(pack["HyperSubjectEncode"], hypernet=loaded, image=image, combine="mean",
                         on_bad_input="error", clip_vision=clip_vision)
        (lora,) = run(pack["HyperSubjectPredictLoRA"], hypernet=loaded, subject=subject)
        return run(pack["HyperSubjectApplyLoRA"], model=base, subject_lora=lora, strength=1.0)
    return personalize


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=sorted(UNETS), default="tiny")
    parser.add_argument("--size", type=int, default=64, help="the step's image side in pixels")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clip-vision", action="store_true", help="also time a CLIP-vision ViT-L/14 encoder")
    args = parser.parse_args(argv)
    import_comfy()
    import comfy.clip_vision

    from hypernet import EncoderSpec, HyperNet, HyperNetConfig, family_targets, save

    from .harness.node_harness import load_pack, model_folder
    from .harness.tiny_files import tiny_clip_vision

    torch.set_grad_enabled(False)
    torch.set_num_threads(os.cpu_count())
    base = load_unet(args.unet)[0]
    unet = base.model.diffusion_model
    family, targets = family_targets(unet)
    targets = tuple(targets)
    image = torch.rand(1, 512, 512, 3)

    def net(encoder: EncoderSpec) -> HyperNet:
        return HyperNet(HyperNetConfig(family=family, targets=targets, rank=RANK, encoder=encoder))

    nets = {"embedded CNN (128 px)": net(EncoderSpec("embedded", image_size=128, token_dim=256))}
    if args.clip_vision:
        nets["CLIP vision ViT-L/14"] = net(EncoderSpec("clip_vision", 224, 1024, "vit-l-14"))
    clip_vision = comfy.clip_vision.load(str(tiny_clip_vision())) if args.clip_vision else None
    kinds = {"one CFG step": cfg_step(unet, args.unet, args.size)}
    with tempfile.TemporaryDirectory() as folder:
        custom_nodes, hypernets = Path(folder) / "custom_nodes", Path(folder) / "hypernets"
        custom_nodes.mkdir()
        hypernets.mkdir()
        pack = load_pack(custom_nodes)
        with model_folder(HYPERNET_FOLDER, hypernets):
            for n, (label, hypernet) in enumerate(nets.items()):
                save(str(hypernets / f"net{n}.safetensors"), hypernet)
                reads_clip = hypernet.config.encoder.kind == "clip_vision"
                kinds[label] = personalization(pack, base, f"net{n}.safetensors", image,
                                               clip_vision if reads_clip else None)
            timings = interleaved(kinds, args.rounds, reference="one CFG step")
    numbers = {rank: sum(rank * (t.in_features + t.out_features) for t in targets) for rank in (4, 16)}
    print(f"{args.unet} UNet, one CFG step = batch 2 at {args.size}×{args.size} px; {len(targets)} targets at rank "
          f"{RANK}; {args.rounds} interleaved rounds, {torch.get_num_threads()} threads")
    print("| kind | ms (median) | ratio to one CFG step (median, range) |\n|---|---|---|")
    for label, timing in timings.items():
        print(f"| {label} | {timing.seconds * 1000:,.1f} | {timing.ratio_text()} |")
    print(f"predicted LoRA file (fp32): rank 4 {numbers[4] * 4 / 1e6:.1f} MB, rank 16 {numbers[16] * 4 / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
