"""Personalization cost: encode one image + predict the LoRA for the full SD1.5 target set, as a ratio to one UNet
step of the tiny checkpoint at 64×64; and the predicted LoRA's size for the SD1.5 and SDXL target sets.

    .venv/bin/python -m bench.predict_speed [--repeats 9] [--clip-vision]
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests")]
from comfy_runtime import import_comfy  # noqa: E402

import_comfy()
import comfy.clip_vision  # noqa: E402
import comfy.model_detection  # noqa: E402
import comfy.sd  # noqa: E402

from hypernet import EncoderSpec, HyperNet, HyperNetConfig, find_targets  # noqa: E402
from tiny_files import tiny_checkpoints, tiny_clip_vision  # noqa: E402

from bench.measure import median_seconds  # noqa: E402

SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
             "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
             "use_temporal_resblock": False}
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}


def meta_targets(unet_config: dict) -> list:
    """LoRA targets of a full-size UNet built on the meta device (no weights)."""
    config = comfy.model_detection.model_config_from_unet_config(unet_config)
    with torch.device("meta"):
        model = config.get_model({}, device="meta")
    return find_targets(model.diffusion_model)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--clip-vision", action="store_true", help="also time a CLIP-vision ViT-L/14 net")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    sd15, sdxl = meta_targets(SD15_UNET), meta_targets(SDXL_UNET)
    model = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoints()["sd15_tiny.safetensors"]))[0]
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 77, 768)
    unet_step = median_seconds(lambda: model.model.diffusion_model(x, t, context=context), args.repeats)
    image = torch.rand(1, 512, 512, 3)
    rows = []
    embedded = HyperNet(HyperNetConfig(family="sd15", targets=tuple(sd15),
                                       encoder=EncoderSpec("embedded", image_size=128, token_dim=256))).eval()
    rows.append(("embedded CNN, 128 px", median_seconds(lambda: embedded(embedded.encode(image)), args.repeats)))
    if args.clip_vision:
        clip_vision = comfy.clip_vision.load(str(tiny_clip_vision()))
        net = HyperNet(HyperNetConfig(family="sd15", targets=tuple(sd15),
                                      encoder=EncoderSpec("clip_vision", 224, 1024, "vit-l-14"))).eval()
        rows.append(("CLIP vision ViT-L/14", median_seconds(
            lambda: net(clip_vision.encode_image(image).penultimate_hidden_states.float()), args.repeats)))
    print(f"one tiny-UNet step at 64×64 (batch 1, no CFG): {unet_step * 1000:.1f} ms")
    print("| encoder | encode + predict (SD1.5, 128 targets, rank 4) | ratio to one tiny-UNet step |\n|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds * 1000:.1f} ms | {seconds / unet_step:.1f}× |")
    for family, targets in (("SD1.5", sd15), ("SDXL", sdxl)):
        numbers = {rank: sum(rank * (t.in_features + t.out_features) for t in targets) for rank in (4, 16)}
        print(f"{family}: {len(targets)} targets; predicted LoRA file (fp32): rank 4 {numbers[4] * 4 / 1e6:.1f} MB, "
              f"rank 16 {numbers[16] * 4 / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
