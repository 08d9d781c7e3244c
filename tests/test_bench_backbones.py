"""``bench backbones`` (benchmarks/BACKBONES.md) on tiny bodies: a row per size and body with the FLOPs that
flop_counter counts, the diffusers DiT timed beside each DiT, and a clear error for a size without a config; and
``bench unet`` beside diffusers' UNet2DModel."""

from __future__ import annotations

import json

from helpers import run_main

BODIES = {
    "pixel": "unet: {base_channels: 16, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [8], "
    "norm_groups: 8}",
    "pixel_dit": "network: dit\n    unet: {hidden_size: 32, depth: 1, num_heads: 2, patch_size: 2}",
    "pixel_hdit": "network: hdit\n    unet: {patch_size: 2, widths: [32, 64], depths: [1, 1], head_dim: 16, "
    "mapping_width: 32}",
}


def test_bench_backbones_rows_flops_and_the_diffusers_peer(tmp_path, session_env, monkeypatch, capsys):
    for stem, body in BODIES.items():
        for size in (16, 32):
            (tmp_path / f"{stem}_{size}.yaml").write_text(f"model:\n  init_args:\n    {body}\n")
    out = tmp_path / "rows.json"
    args = ["bench", "backbones", "--configs", str(tmp_path), "--sizes", "16", "32", "--batch", "2", "--rounds", "1",
            "--json", str(out)]  # fmt: skip
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code == 0, err
    rows = {(r["size"], r["body"]): r for r in json.loads(out.read_text())}
    assert set(rows) == {(s, b) for s in (16, 32) for b in ("unet", "dit2", "dit4", "hdit")}
    assert all(r["images_per_s"] > 0 and r["params"] > 0 for r in rows.values())
    for body in ("dit2", "dit4"):  # diffusers' DiT of the same configuration, timed beside ours
        assert rows[32, body]["diffusers_images_per_s"] > 0 and rows[32, body]["ratio_vs_diffusers"] > 0
    assert rows[32, "unet"]["ratio_vs_diffusers"] is None
    # the same patch at twice the side: 4x the tokens, so at least 4x the FLOPs; p=4 has a quarter of p=2's tokens
    assert rows[32, "dit2"]["train_gflops_per_image"] > 4 * rows[16, "dit2"]["train_gflops_per_image"]
    assert rows[32, "dit4"]["train_gflops_per_image"] < rows[32, "dit2"]["train_gflops_per_image"] / 3
    code, err = run_main([*args[:4], "--sizes", "64"], session_env, monkeypatch, capsys)
    assert code != 0 and "pixel_64.yaml" in err and "--configs" in err, err


def test_bench_unet_times_ours_beside_diffusers():
    from pyramid_dm.bench import bench_unet, parser

    args = ["unet", "--image-size", "16", "--batch", "2", "--base", "32", "--mult", "1", "2", "--blocks", "1",
            "--attn", "--rounds", "1", "--steps", "1", "--warmup", "1"]  # fmt: skip
    assert bench_unet(parser().parse_args(args)) > 0
