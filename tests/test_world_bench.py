"""The miniature world's comparison bench and the README's demo, at toy size, on the committed world model files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import hypernet
from bench.world import compare, demo
from bench.world.base.evaluate import stock_loadable
from bench.world.identity_gap import identity_gap, pair_batch
from train.base_model import FrozenBase


def test_the_comparison_bench_at_toy_size_gives_every_row_every_column_and_a_grid(pack, tmp_path):
    args = compare.parse_args(["--ckpt", str(demo.BASE_MODEL), "--hypernet", str(demo.HYPERNET),
                               "--hypernet-lambda0", str(demo.HYPERNET), "--subjects", "2", "--prompts", "1",
                               "--seeds", "2", "--hm-cfg", "4", "--finetune-steps", "1", "3", "--out", str(tmp_path)])
    results = compare.run(pack, args)

    assert [r["method"] for r in results] == [
        "base model (no subject)", "hypernet, plain CFG", "hypernet, HM-CFG s_text 5 s_subject 4",
        "hypernet λ = 0, plain CFG", "fine-tuned LoRA, 1 steps", "fine-tuned LoRA, 3 steps"]
    for r in results:
        for column in ("identity_accuracy", "fidelity", "context_alignment", "background_alignment"):
            assert 0.0 <= r[column] <= 1.0, (r["method"], column, r[column])
        assert r["diversity"] > 0, f"{r['method']}: two seeds gave the same image"
    seconds = {r["method"]: r["seconds_per_subject"] for r in results}
    assert seconds["base model (no subject)"] == 0 < seconds["hypernet, plain CFG"]
    assert seconds["fine-tuned LoRA, 1 steps"] < seconds["fine-tuned LoRA, 3 steps"]
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == results
    assert len((tmp_path / "table.md").read_text().splitlines()) == 2 + len(results) + 2
    assert Image.open(tmp_path / "grid.png").size == (5 * 64, 2 * 64)  # reference | 3 rows | truth, per subject


@pytest.mark.slow
def test_the_demo_queues_the_shipped_workflow_on_a_real_server_and_writes_images_and_a_grid(tmp_path):
    assert demo.main(["--subjects", "1", "--prompts", "2", "--out", str(tmp_path)]) == 0

    samples = sorted(tmp_path.glob("toy_*_*.png"))
    assert len(samples) == 2
    for path in samples:
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (64, 64, 3) and pixels.std() > 0
    assert Image.open(tmp_path / "grid.png").size == (5 * 64, 64)  # reference | (sample, truth) × 2


def test_the_identity_gap_compares_the_same_noise_with_own_shuffled_and_no_lora(comfy_root, tmp_path):
    base = FrozenBase.load(str(stock_loadable(demo.BASE_MODEL, tmp_path)), torch.device("cpu"))
    batch = pair_batch(8, seed=0)
    net, _ = hypernet.load(str(demo.HYPERNET))
    trained = identity_gap(base, net, batch)
    assert trained["own"] != trained["shuffled"] and trained["own"] != trained["none"]
    with torch.no_grad():
        for name, param in net.named_parameters():
            if ".heads.up_" in f".{name}":
                param.zero_()  # ΔW = 0 for every subject
    untrained = identity_gap(base, net, batch)
    assert untrained["own"] == untrained["shuffled"] == untrained["none"] == trained["none"]
