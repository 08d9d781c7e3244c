"""Two-rank DDP on CPU (gloo): equal training batch counts per rank, disjoint and complete validation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import run_cli, wandb_inspect

from pyramid_dm.bench.ddp import free_port

ROOT = Path(__file__).resolve().parents[1]


class _Trainer:  # the two attributes the data module reads from Lightning's trainer
    def __init__(self, world_size: int):
        self.world_size = world_size


def _rank(rank: int, world: int, port: int, shards: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from pyramid_dm.data import ShardDataModule

    dm = ShardDataModule(shards, batch_size=16, num_workers=2)
    dm.trainer = _Trainer(world)
    dm.setup("fit")
    train = sum(1 for _ in dm.train_dataloader())
    val = torch.cat([b[2] for b in dm.val_dataloader()]).tolist()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"train_batches": train, "val_seeds": val}))
    dist.destroy_process_group()


def test_two_ranks_see_equal_train_batches_and_disjoint_val(digits_shards, tmp_path):
    mp.spawn(_rank, args=(2, free_port(), str(digits_shards), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    from pyramid_dm.data import Manifest

    m = Manifest.load(digits_shards)
    assert r0["train_batches"] == r1["train_batches"] == -(-m.count("train") // (16 * 2))
    assert r0["val_seeds"] and r1["val_seeds"] and not set(r0["val_seeds"]) & set(r1["val_seeds"])
    assert len(r0["val_seeds"]) + len(r1["val_seeds"]) == m.count("val")


def test_two_process_ddp_fit_through_the_cli(session_env, tmp_path):
    """Lightning's DDP on 2 CPU processes: trains, validates and measures sample quality across ranks without
    hanging, one W&B run."""
    args = [
        "fit",
        "--config",
        "configs/quickstart.yaml",
        "--exp.root",
        str(tmp_path),
        "--trainer.max_steps",
        "4",
        "--trainer.val_check_interval",
        "2",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--data.init_args.num_workers",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.callbacks+=pyramid_dm.callbacks.SampleQuality",
        "--trainer.callbacks.every_n_steps=2",
        "--trainer.callbacks.num_samples=40",
        "--trainer.callbacks.batch_size=10",
        "--trainer.callbacks.steps=3",
        "--trainer.callbacks.metrics=[swd]",  # the images themselves gathered from both ranks
    ]
    proc = run_cli(args, session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "quickstart"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    rec = wandb_inspect(runs[0])
    summary = rec["summary"]
    # sample quality: each rank drew 2 of the 4 batches; rank 0 gathered all 40 samples' features
    assert summary["val/digits_clf_num_samples"] == 40 and summary["val/fid_digits_clf"]["min"] > 0
    assert summary["val/swd_mean"]["min"] > 0  # best-of summaries (define_metric)
    cost = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["training_cost"]
    assert cost["images"] == 4 * 2 * 128  # both ranks' images counted, and their FLOPs
    config = rec["config"]
    assert config["world_size"] == 2 and config["effective_batch_size"] == 2 * 128
    assert config["effective_lr"] == config["lr"]  # no silent learning-rate scaling with more GPUs


BODIES = {
    "unet": [],
    "dit": ["--model.init_args.network", "dit", "--model.init_args.unet", "{hidden_size: 32, depth: 1, num_heads: 4}"],
    "hdit": ["--model.init_args.network", "hdit", "--model.init_args.unet",
             "{widths: [32, 64], depths: [1, 1], head_dim: 8, patch_size: 1, mapping_width: 32}"],
}  # fmt: skip


@pytest.mark.parametrize("network", sorted(BODIES))
def test_two_rank_ddp_trains_a_step_aware_supernet(network, session_env, tmp_path):
    """The sandwich rule under DDP (gloo), for each body: every width's sliced parameters get gradients on every rank
    (no unused parameters), per-width losses reach W&B, the supernet checkpoint is written."""
    args = ["fit", "--config", "configs/quickstart.yaml", "--exp.root", str(tmp_path), "--trainer.max_steps", "3"]
    args += BODIES[network]
    args += ["--trainer.val_check_interval", "3", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    args += ["--trainer.strategy", "ddp", "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false"]
    args += ["--trainer.log_every_n_steps", "1", "--model.init_args.step_aware", "{widths: [1.0, 0.5, 0.25]}"]
    proc = run_cli(args, session_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "quickstart"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["hyper_parameters"]["step_aware"]["widths"] == [1.0, 0.5, 0.25]
    assert ckpt["hyper_parameters"]["network"] == network
    summary = wandb_inspect(next((run / "wandb").glob("offline-run-*")))["summary"]
    assert (
        summary["train/loss_w0.25"] > 0 and summary["val/loss_w0.5"]["min"] > 0 and summary["val/loss_w0.25"]["min"] > 0
    )


def test_ddp_scaling_benchmark_times_one_and_two_ranks(session_env):
    """``bench ddp`` (benchmarks/SCALING.md) on a tiny UNet: a row per world size, the gradient bytes of that UNet,
    and the efficiency line."""
    from helpers import run_cli

    from pyramid_dm.nets import UNet

    args = ["--ranks", "1", "2", "--batch", "4", "--base", "32", "--mult", "1", "2", "--attn", "--blocks", "1"]
    proc = run_cli(["bench", "ddp", *args, "--steps", "1", "--rounds", "1", "--warmup", "1"], session_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ") and "ranks" not in line]
    assert [int(r[0]) for r in rows] == [1, 2]
    assert all(float(r[1]) > 0 and float(r[3]) > 0 for r in rows)  # step time and images/s
    params = sum(
        p.numel()
        for p in UNet(
            1, image_size=8, base_channels=32, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[]
        ).parameters()
    )
    assert f"gradient bytes all-reduced per step: {params * 4 / 2**20:.1f} MiB" in proc.stdout
    assert float(proc.stdout.split("ddp_efficiency:")[1].split()[0]) > 0
