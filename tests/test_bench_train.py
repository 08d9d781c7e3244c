"""``bench train`` on CPU: one row per config and speed variant with images/s with and without the loader, the loader
alone, TFLOP/s from the training FLOPs flop_counter counts, MFU against a given peak, on generated or given shards."""

from __future__ import annotations

import json

import pytest
from helpers import run_main


def test_bench_train_rows_per_variant_with_and_without_the_loader(tmp_path, session_env, monkeypatch, capsys):
    out = tmp_path / "rows.json"
    args = ["bench", "train", "--config", "configs/quickstart.yaml", "--variants", "eager", "bf16", "--batch", "4",
            "--rounds", "1", "--steps", "1", "--warmup", "1", "--workers", "0", "--loader-batches", "2",
            "--peak-tflops", "0.5", "--json", str(out)]  # fmt: skip
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code == 0, err
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"eager", "bf16"}
    flops = {r["train_gflops_per_image"] for r in rows.values()}
    assert len(flops) == 1 and flops.pop() > 0  # one model, one count, whatever the variant
    for r in rows.values():
        assert r["images_per_s"] > 0 and r["images_per_s_with_loader"] > 0 and r["loader_images_per_s"] > 0
        assert r["image_size"] == 32 and r["batch"] == 4  # the generated set, at the quickstart's default size
        assert r["tflops_achieved"] == pytest.approx(r["images_per_s"] * r["train_gflops_per_image"] / 1e3)
        assert r["mfu"] == pytest.approx(r["tflops_achieved"] / 0.5) and r["device"] == "cpu"
    assert rows["eager"]["numeric_mode"] == "fp32" and rows["bf16"]["numeric_mode"] == "bf16"
    code, err = run_main(["bench", "train", "--config", "configs/nope.yaml"], session_env, monkeypatch, capsys)
    assert code != 0 and "no config file 'configs/nope.yaml'" in err
    args = ["bench", "train", "--config", "configs/autoencoder/digits_kl.yaml", "--workers", "0"]
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code != 0 and "bench train times diffusion models; configs/autoencoder/digits_kl.yaml builds a" in err
