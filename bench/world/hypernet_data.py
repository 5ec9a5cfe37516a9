"""The world hypernet's training folder: every training subject in many contexts, each image with the toy's mask
(for `subject_loss_weight`), plus two held-out subjects that the trainer shows in its sample grids (their folders
sort last, where the trainer's `held_out` takes them from).

    python -m bench.world.hypernet_data [--out .cache/world/hyper/data] [--images 48]
"""
import argparse
import shutil
from pathlib import Path

from .base.common import CACHE
from .dataset import write_subject_folders
from .subjects import split_subjects

SHOWN_HELD_OUT = 2  # = `held_out` in hypernet.toml


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=CACHE / "hyper" / "data")
    parser.add_argument("--images", type=int, default=48, help="images per training subject")
    args = parser.parse_args(argv)
    train, held_out = split_subjects()
    shutil.rmtree(args.out, ignore_errors=True)
    write_subject_folders(args.out, train, args.images, seed=1, masks=True)
    write_subject_folders(args.out, held_out[:SHOWN_HELD_OUT], 4, seed=2, prefix="zz_held_out")


if __name__ == "__main__":
    main()
