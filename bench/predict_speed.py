"""Personalization cost in units of one sampler step of the model it personalizes, and the predicted LoRA's size.

    .venv/bin/python -m bench.predict_speed [--unet tiny|sd15|sdxl] [--size 512] [--rounds 7] [--clip-vision]

Personalization: encode one 512×512 subject image (the embedded CNN, or a CLIP vision ViT-L/14 with random weights,
which costs what a trained one does), predict a rank-4 LoRA for every attention projection of the UNet, and patch it
onto a clone as Apply Predicted LoRA does. One step: one plain CFG evaluation of the UNet (cond and uncond, batch 2)
at --size. The kinds are interleaved round by round (`bench.measure.interleaved`); the ratios are medians of
per-round ratios with their range. Full-size UNets have random weights (`bench.full_size`).
"""
import argparse
import os

import torch

from .full_size import UNETS, load_unet
from .harness.comfy_runtime import import_comfy
from .measure import interleaved

RANK = 4


def cfg_step(unet, name: str, size: int):
    """One CFG evaluation of `unet`: a batch of two latents at `size` px with random text conditioning."""
    config = UNETS[name]
    x, t = torch.randn(2, 4, size // 8, size // 8), torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, config["context_dim"])
    y = torch.randn(2, config["adm_in_channels"]) if config.get("adm_in_channels") else None
    return lambda: unet(x, t, context=context, y=y)


def personalization(base, net, image: torch.Tensor, encode):
    """Encode → predict → patch a clone, as Encode Subject, Predict LoRA and Apply Predicted LoRA do."""
    from comfy.weight_adapter.lora import LoRAAdapter

    def personalize():
        lora = net(encode(image))
        clone = base.clone()
        clone.add_patches({f"{t.name}.weight": LoRAAdapter(set(), (lora.up[t.name][0], lora.down[t.name][0],
                                                                   lora.alpha, None, None, None))
                           for t in lora.targets})
        return clone
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

    from hypernet import EncoderSpec, HyperNet, HyperNetConfig, family_of, find_targets

    from .harness.tiny_files import tiny_clip_vision

    torch.set_grad_enabled(False)
    torch.set_num_threads(os.cpu_count())
    base = load_unet(args.unet)[0]
    unet = base.model.diffusion_model
    targets, family = tuple(find_targets(unet)), family_of(unet)
    image = torch.rand(1, 512, 512, 3)
    embedded = HyperNet(HyperNetConfig(family=family, targets=targets, rank=RANK,
                                       encoder=EncoderSpec("embedded", image_size=128, token_dim=256))).eval()
    kinds = {"one CFG step": cfg_step(unet, args.unet, args.size),
             "embedded CNN (128 px)": personalization(base, embedded, image, embedded.encode)}
    if args.clip_vision:
        clip_vision = comfy.clip_vision.load(str(tiny_clip_vision()))
        net = HyperNet(HyperNetConfig(family=family, targets=targets, rank=RANK,
                                      encoder=EncoderSpec("clip_vision", 224, 1024, "vit-l-14"))).eval()
        kinds["CLIP vision ViT-L/14"] = personalization(
            base, net, image, lambda im: clip_vision.encode_image(im).penultimate_hidden_states.float())
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
