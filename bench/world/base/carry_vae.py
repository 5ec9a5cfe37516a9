"""Take the TAESD out of an assembled world checkpoint as a training state that `build` and `train_unet` read.

    python -m bench.world.base.carry_vae --ckpt OLD_WORLD_CHECKPOINT [--out .cache/world/vae_state.safetensors]

World v2 carries world v1's TAESD over (trained by `train_vae --steps 1600` on v1's toys): its VAE row in the table
shows that v2's two-colour identities survive it.
"""
import argparse
import json
from pathlib import Path

from .build import VAE_PREFIX, read_checkpoint, unprefixed
from .common import CACHE, save_state


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True, help="an assembled world checkpoint (build.py)")
    parser.add_argument("--out", type=Path, default=CACHE / "vae_state.safetensors")
    args = parser.parse_args(argv)
    state, metadata = read_checkpoint(args.ckpt)
    trained = json.loads(metadata["info"])["vae"]  # {"step": …, "psnr": …, latent statistics}
    vae = unprefixed(state, VAE_PREFIX)
    save_state(args.out, {"step": trained.pop("step"), "metrics": trained, "carried_from": str(args.ckpt)},
               {"model": vae})


if __name__ == "__main__":
    main()
