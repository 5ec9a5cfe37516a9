"""Cost of a hypernet training step as a ratio to a plain forward+backward of the frozen UNet, and its peak memory.

    .venv/bin/python -m bench.train_speed [--unet sd15] [--batch 8] [--size 64] [--rounds 7]
                                          [--grad-checkpointing] [--checkpoint PATH] [--config TOML]

Plain: the frozen UNet's denoising loss, backward to the noisy input (activations only; no weight gradients).
LoRA: the same with per-sample LoRAs (leaf factors) on every attention projection. Training step: hypernet forward
(embedded encoder; the trainer's default sizes, or those of a --config file) → per-sample LoRA → the same UNet
forward → backward into the hypernet → AdamW step. Times: the three kinds interleaved round by round in one process
(`bench.measure.interleaved`), ratios as medians of per-round ratios with their range. Peak memory: each kind alone
in a child process, resident memory sampled every 2 ms above the level just before its steps. `--unet sd15` is the
full-size SD1.5 UNet with random weights (`bench.full_size`) beside the checkpoint's CLIP-L and VAE.
"""
import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from .measure import interleaved, rss_mb

REPO = Path(__file__).resolve().parent.parent
KINDS = ("plain", "lora", "train")


class PeakMemory:
    """Highest resident memory seen while the block runs, above the level when it started (MB)."""

    def __enter__(self) -> "PeakMemory":
        self.start, self.peak, self._running = rss_mb(), rss_mb(), True
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._running = False
        self._thread.join()
        self.extra = self.peak - self.start


def step_functions(args) -> dict:
    """The three kinds as callables on one frozen base, batch and hypernet."""
    from train.base_model import FrozenBase, import_comfy
    from train.config import TrainConfig

    import_comfy(cpu=True)

    from hypernet import PerSampleLoRA, weight_l2
    from train.trainer import SubjectToLoRA, build_hypernet, make_optimizer, sample_noise

    from .full_size import load_unet
    from .harness.tiny_files import tiny_checkpoints

    checkpoint = args.checkpoint or str(tiny_checkpoints()["sd15_tiny_clip.safetensors"])
    base = FrozenBase.load(checkpoint, torch.device("cpu"))
    if args.unet:
        base = FrozenBase(load_unet(args.unet)[0].model, base.clip, base.vae, torch.device("cpu"), source=args.unet)
    if args.grad_checkpointing:
        base.enable_grad_checkpointing()
    images = torch.rand(args.batch, args.size, args.size, 3)
    latents = base.encode_images(images)
    text = base.encode_text(["a toy on a blue background"] * args.batch)
    sigma, noise = sample_noise(torch.arange(args.batch), latents.shape[1:], base)
    x_noisy = base.model_sampling.noise_scaling(sigma, noise, latents)
    sizes = dict(base_checkpoint=checkpoint, data_dir=".", image_size=args.size, encoder="embedded")
    cfg = TrainConfig.from_toml(args.config, **sizes) if args.config else TrainConfig(**sizes)
    net = build_hypernet(cfg, base, None)
    with torch.no_grad():  # an untrained net predicts zeros; give the LoRAs the cost of real ones
        for name, param in net.named_parameters():
            if ".heads.up_" in f".{name}":
                param.normal_(0, 0.01)
    personalizer, optimizer = SubjectToLoRA(net), make_optimizer(net, cfg)
    fixed = personalizer(images)

    def plain():
        x = x_noisy.clone().requires_grad_(True)
        torch.nn.functional.mse_loss(base.predict(x, sigma, text), noise).backward()

    def lora_only():
        lora = type(fixed)(fixed.targets, {k: v.detach().requires_grad_(True) for k, v in fixed.down.items()},
                           {k: v.detach().requires_grad_(True) for k, v in fixed.up.items()}, fixed.rank,
                           fixed.alpha, fixed.family)
        with PerSampleLoRA(base.diffusion_model, lora):
            torch.nn.functional.mse_loss(base.predict(x_noisy, sigma, text), noise).backward()

    def train_step():
        lora = personalizer(images)
        with PerSampleLoRA(base.diffusion_model, lora):
            loss = torch.nn.functional.mse_loss(base.predict(x_noisy, sigma, text), noise)
            (loss + cfg.reg_lambda * weight_l2(lora).mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {"plain": plain, "lora": lora_only, "train": train_step}


def peak_memory(argv: list[str], kind: str) -> float:
    """Peak extra resident memory (MB) of two calls of `kind` in a child process of its own (same arguments)."""
    command = [sys.executable, "-m", "bench.train_speed", *argv, "--memory-of", kind]
    output = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])["extra_mb"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", choices=("tiny", "sd15"), help="replace the checkpoint's UNet by this one with "
                                                                 "random weights (bench.full_size)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute the UNet's blocks in backward")
    parser.add_argument("--checkpoint", help="a full SD1.5-family checkpoint (default: the test checkpoint); with "
                                             "--unet only its CLIP and VAE are used")
    parser.add_argument("--config", help="a trainer TOML file whose hypernet sizes to use (default: the trainer's)")
    parser.add_argument("--memory-of", choices=KINDS, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    steps = step_functions(args)
    if args.memory_of:
        with PeakMemory() as memory:
            for _ in range(2):
                steps[args.memory_of]()
        print(json.dumps({"extra_mb": memory.extra}))
        return
    timings = interleaved(steps, args.rounds, reference="plain")
    del steps
    memory = {kind: peak_memory(argv, kind) for kind in KINDS}
    unet = args.unet or Path(args.checkpoint or "the test checkpoint").name
    print(f"{unet} UNet, batch {args.batch}, {args.size}×{args.size} px, {args.rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads, gradient checkpointing {'on' if args.grad_checkpointing else 'off'}, "
          f"hypernet sizes from {args.config or 'the trainer defaults'}")
    print("| step | ms (median) | time ratio (median, range) | peak extra memory (MB) | memory ratio |\n"
          "|---|---|---|---|---|")
    for kind, label in zip(KINDS, ("plain UNet forward+backward", "the same with per-sample LoRAs",
                                   "whole hypernet training step")):
        print(f"| {label} | {timings[kind].seconds * 1000:,.0f} | {timings[kind].ratio_text()} | "
              f"{memory[kind]:,.0f} | {memory[kind] / memory['plain']:.2f}× |")


if __name__ == "__main__":
    main()
