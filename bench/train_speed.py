"""Cost of a training step as a ratio to a plain forward+backward of the frozen UNet (same batch, same resolution).

    .venv/bin/python -m bench.train_speed [--batch 8] [--size 64] [--repeats 7] [--checkpoint PATH] [--config TOML]

Plain: the frozen UNet's denoising loss, backward to the noisy input (activations only; no weight gradients).
Training step: hypernet forward (embedded encoder; the trainer's default sizes, or those of a --config file) → per-sample LoRA on every attention projection
→ the same UNet forward → backward into the hypernet → AdamW step. Peak memory: resident memory sampled every 2 ms
while the steps run, above the level just before them; each kind in a child process of its own.
"""
import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from bench.measure import median_seconds, rss_mb

REPO = Path(__file__).resolve().parent.parent




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


def measure(kind: str, checkpoint: str, batch: int, size: int, repeats: int, config: str | None) -> dict:
    """One kind ('plain', 'lora' or 'train') in this process: median step seconds and peak extra memory in MB."""
    from train.base_model import FrozenBase, import_comfy
    from train.config import TrainConfig

    import_comfy(cpu=True)
    from train.trainer import SubjectToLoRA, build_hypernet, make_optimizer, sample_noise
    from hypernet import PerSampleLoRA, weight_l2

    base = FrozenBase.load(checkpoint, torch.device("cpu"))
    images = torch.rand(batch, size, size, 3)
    latents = base.encode_images(images)
    text = base.encode_text(["a toy on a blue background"] * batch)
    sigma, noise = sample_noise(torch.arange(batch), latents.shape[1:], base)
    x_noisy = base.model_sampling.noise_scaling(sigma, noise, latents)
    sizes = dict(base_checkpoint=checkpoint, data_dir=".", image_size=size, encoder="embedded")
    cfg = TrainConfig.from_toml(config, **sizes) if config else TrainConfig(**sizes)
    net = build_hypernet(cfg, base, None)
    with torch.no_grad():  # an untrained net predicts zeros; give the LoRAs the cost of real ones
        for name, param in net.named_parameters():
            if ".heads.up_" in f".{name}":
                param.normal_(0, 0.01)
    personalizer, optimizer = SubjectToLoRA(net), make_optimizer(net, cfg)

    def plain():
        x = x_noisy.clone().requires_grad_(True)
        torch.nn.functional.mse_loss(base.predict_noise(x, sigma, text), noise).backward()

    fixed = personalizer(images)

    def lora_only():
        """The UNet with per-sample LoRAs (leaf factors, one subject per row): forward+backward into the factors."""
        lora = type(fixed)(fixed.targets, {k: v.detach().requires_grad_(True) for k, v in fixed.down.items()},
                           {k: v.detach().requires_grad_(True) for k, v in fixed.up.items()}, fixed.rank,
                           fixed.alpha, fixed.family)
        with PerSampleLoRA(base.diffusion_model, lora):
            torch.nn.functional.mse_loss(base.predict_noise(x_noisy, sigma, text), noise).backward()

    def train_step():
        lora = personalizer(images)
        with PerSampleLoRA(base.diffusion_model, lora):
            loss = torch.nn.functional.mse_loss(base.predict_noise(x_noisy, sigma, text), noise)
            (loss + cfg.reg_lambda * weight_l2(lora).mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with PeakMemory() as memory:
        seconds = median_seconds({"plain": plain, "lora": lora_only, "train": train_step}[kind], repeats)
    return {"seconds": seconds, "extra_mb": memory.extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--checkpoint", default=str(REPO / ".cache/checkpoints/v1/sd15_tiny_clip.safetensors"))
    parser.add_argument("--config", help="a trainer TOML file whose hypernet sizes to use (default: the trainer's)")
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind:
        print(json.dumps(measure(args.kind, args.checkpoint, args.batch, args.size, args.repeats, args.config)))
        return
    results = {}
    for kind in ("plain", "lora", "train"):
        command = [sys.executable, "-m", "bench.train_speed", "--kind", kind, "--batch", str(args.batch),
                   "--size", str(args.size), "--repeats", str(args.repeats), "--checkpoint", args.checkpoint,
                   *(["--config", args.config] if args.config else [])]
        output = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True).stdout
        results[kind] = json.loads(output.strip().splitlines()[-1])
    plain = results["plain"]
    print(f"batch {args.batch}, {args.size}×{args.size} px, median of {args.repeats}, {torch.get_num_threads()} threads, "
          f"hypernet sizes from {args.config or 'the trainer defaults'}")
    print("| step | ms | time ratio | peak extra memory (MB) | memory ratio |\n|---|---|---|---|---|")
    for label, r in (("plain UNet forward+backward", plain), ("the same with per-sample LoRAs", results["lora"]),
                     ("whole hypernet training step", results["train"])):
        print(f"| {label} | {r['seconds'] * 1000:.0f} | {r['seconds'] / plain['seconds']:.2f}× | "
              f"{r['extra_mb']:.0f} | {r['extra_mb'] / plain['extra_mb']:.2f}× |")


if __name__ == "__main__":
    main()
