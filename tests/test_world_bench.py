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


def test_the_comparison_bench_at_toy_size_gives_every_row_every_column_the_bars_and_a_grid(pack, tmp_path):
    args = compare.parse_args(["--ckpt", str(demo.BASE_MODEL), "--hypernet", str(demo.HYPERNET),
                               "--hypernet-lambda0", str(demo.HYPERNET), "--subjects", "2", "--prompts", "1",
                               "--seeds", "2", "--cfg", "3", "--hm-cfg", "4", "--finetune-steps", "1", "3",
                               "--out", str(tmp_path)])
    results = compare.run(pack, args)

    assert [r["method"] for r in results] == [
        "exact renders", "renders through the world VAE", "base model, identity in words (text oracle)",
        "base model, class word only", "fine-tuned LoRA, 1 steps", "fine-tuned LoRA, 3 steps",
        "fine-tuned LoRA, 3 steps, HM-CFG s_subject 4", "hypernet, plain CFG", "hypernet, HM-CFG s_subject 4",
        "hypernet λ = 0, plain CFG"]
    columns = ("identity_accuracy", "identity_body", "identity_second", "fidelity", "context_alignment",
               "context_background", "context_position", "context_size", "context_lighting")
    for r in results:
        for column in columns:
            assert 0.0 <= r[column] <= 1.0, (r["method"], column, r[column])
    exact = results[0]
    assert all(exact[column] == 1.0 for column in columns if column != "fidelity") and exact["fidelity"] > 0.98
    assert exact["diversity"] == 0.0  # one exact rendering per prompt, whatever the seed
    for r in results[2:]:
        assert r["diversity"] > 0, f"{r['method']}: two seeds gave the same image"
    seconds = {r["method"]: r["seconds_per_subject"] for r in results}
    assert seconds["base model, class word only"] == 0 < seconds["hypernet, plain CFG"]
    assert seconds["fine-tuned LoRA, 1 steps"] < seconds["fine-tuned LoRA, 3 steps"]
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rows"] == results and written["setup"]["vae_psnr"] > 15
    assert written["setup"]["cfg"] == written["setup"]["s_text"] == 3.0
    bars = written["bars"]  # without a 200-step fine-tune: the render, oracle, class-word and two HM-CFG lines
    assert len(bars) == 6 and bars[0].startswith("PASS exact renders: identity 100 %")
    assert bars[1].startswith("PASS" if results[1]["identity_accuracy"] >= 0.95 else "MISS")
    assert all(line.split()[0] in ("PASS", "MISS", "NOTE") for line in bars)
    table = (tmp_path / "table.md").read_text()
    assert all(f"| {r['method']} |" in table for r in results)
    assert Image.open(tmp_path / "grid.png").size == (7 * 64, 2 * 64)  # reference | 5 rows | truth, per subject


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


def test_the_committed_hypernet_gives_each_held_out_toy_a_lora_of_its_own(comfy_root, tmp_path):
    """Its LoRA from a toy's reference denoises the toy's other images better than another toy's LoRA does."""
    base = FrozenBase.load(str(stock_loadable(demo.BASE_MODEL, tmp_path)), torch.device("cpu"))
    net, _ = hypernet.load(str(demo.HYPERNET))
    gap = identity_gap(base, net, pair_batch(64, seed=1))
    assert gap["own"] < 0.97 * gap["shuffled"], gap


def test_fine_tuned_loras_are_cached_per_subject_and_recomputed_when_a_setting_changes(comfy_root, tmp_path):
    checkpoint = stock_loadable(demo.BASE_MODEL, tmp_path)
    cases = compare.make_cases(1, 1, seed=0)
    first = compare.finetuned_loras(cases, checkpoint, 4, 4.0, (1, 2), tmp_path / "cache")
    (cached,) = (tmp_path / "cache").iterdir()
    written = cached.stat().st_mtime_ns
    again = compare.finetuned_loras(cases, checkpoint, 4, 4.0, (1, 2), tmp_path / "cache")
    assert cached.stat().st_mtime_ns == written
    subject = cases[0].subject.id
    for steps in (1, 2):
        (state, seconds), (state_again, seconds_again) = first[subject][steps], again[subject][steps]
        assert seconds == seconds_again and state.keys() == state_again.keys()
        assert all(torch.equal(state[k], state_again[k]) for k in state)
    one, two = first[subject][1][0], first[subject][2][0]
    assert any(not torch.equal(one[k], two[k]) for k in one)  # the snapshots differ
    compare.finetuned_loras(cases, checkpoint, 4, 2.0, (1, 2), tmp_path / "cache")
    assert cached.stat().st_mtime_ns != written
    written = cached.stat().st_mtime_ns
    retrained = bytearray(checkpoint.read_bytes())
    retrained[-2] ^= 1  # another model at the same path, of the same size: a weight's low bit (safetensors data)
    checkpoint.write_bytes(retrained)
    compare.finetuned_loras(cases, checkpoint, 4, 2.0, (1, 2), tmp_path / "cache")
    assert cached.stat().st_mtime_ns != written
