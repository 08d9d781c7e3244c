"""The unchanged slurm/fit.sbatch on a real Slurm cluster (2 emulated nodes on this machine, started by the fixture).

Needs root (Slurm daemons, apt); CI runs as root. Overrides reach the script only through sbatch arguments and the
environment, as on a production cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("apt-get"),
    reason="a local Slurm cluster needs root and apt-get (CI has both)",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm-state")
    env = {**os.environ, "SLURM_TEST_DIR": str(state)}
    up = subprocess.run(["bash", str(CLUSTER), "up", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    yield
    subprocess.run(["bash", str(CLUSTER), "down"], env=env, timeout=60)


def sbatch(root: Path, env: dict, sbatch_args: list[str], *overrides: str, wait=True, timeout=300):
    args = [
        "sbatch",
        *(["--wait"] if wait else ["--parsable"]),
        *sbatch_args,
        "--output",
        str(root / "%x-%j.out"),
        "slurm/fit.sbatch",
        "configs/quickstart.yaml",
        "--exp.root",
        str(root),
        "--trainer.val_check_interval",
        "3",
        "--data.init_args.num_workers",
        "1",
        *overrides,
    ]
    run_env = {**os.environ, **env, "PYRAMID_DM_ACCELERATOR": "cpu"}
    if wait:
        return subprocess.run(args, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=timeout)
    return subprocess.run(args, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=60).stdout.strip()


def job_log(root: Path) -> str:
    return "\n".join(p.read_text() for p in root.glob("pyramid_dm-*.out"))


@pytest.mark.parametrize(("nodes", "tasks"), [(2, 1), (1, 2)])
def test_ddp_training_through_sbatch(cluster, session_env, digits_shards, tmp_path, nodes, tasks):
    proc = sbatch(
        tmp_path, session_env, ["--nodes", str(nodes), "--ntasks-per-node", str(tasks)], "--trainer.max_steps", "6"
    )
    log = job_log(tmp_path)
    assert proc.returncode == 0, log[-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # every rank active
    run = tmp_path / "quickstart"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one W&B run, written by rank 0
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["quickstart"]  # one run directory


def test_a_killed_rank_fails_the_job_quickly(cluster, session_env, digits_shards, tmp_path):
    job = sbatch(
        tmp_path,
        session_env,
        ["--nodes", "2", "--ntasks-per-node", "1", "--time", "10"],
        "--trainer.max_steps",
        "100000",
        wait=False,
    )
    try:
        deadline = time.time() + 120
        first_ckpt = tmp_path / "quickstart" / "checkpoints" / "last.ckpt"
        while not first_ckpt.exists() and time.time() < deadline:  # both ranks are training once step 3 is saved
            time.sleep(1)
        ranks = subprocess.run(["pgrep", "-f", f"exp.root {tmp_path}"], capture_output=True, text=True).stdout.split()
        argv0 = lambda pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]  # noqa: E731
        pythons = [pid for pid in ranks if b"python" in argv0(pid)]  # the ranks, not srun or the batch script
        assert first_ckpt.exists() and len(pythons) >= 2, job_log(tmp_path)[-2000:]
        killed_at = time.time()
        os.kill(int(pythons[-1]), 9)
        while time.time() - killed_at < 120:
            squeue = ["squeue", "-h", "-j", job, "-o", "%T"]
            if not subprocess.run(squeue, capture_output=True, text=True).stdout.strip():
                break
            time.sleep(1)
        elapsed = time.time() - killed_at
    finally:  # never leave a job behind to hold the rendezvous port (and CPUs) for later tests
        subprocess.run(["scancel", job], capture_output=True)
    assert elapsed < 60, f"job {job} still running {elapsed:.0f} s after a rank was killed"
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "JobState=FAILED" in info or "JobState=CANCELLED" in info or "Exited with exit code" in job_log(tmp_path)


def test_a_sweep_array_gives_one_run_per_line_in_one_wandb_group(cluster, session_env, digits_shards, tmp_path):
    """slurm/sweep.sbatch as a 2-element array: two experiments, two W&B runs, one group; then slurm/evaluate.sbatch
    evaluates one of them and logs into the same group."""
    sweep = tmp_path / "lr_sweep.txt"
    sweep.write_text(
        "# lr sweep\n"
        "configs/quickstart.yaml --model.init_args.lr 1e-3\n"
        "\n"
        "configs/quickstart.yaml --model.init_args.lr 3e-4\n"
    )
    shared = ["--exp.root", str(tmp_path), "--trainer.max_steps", "3", "--trainer.val_check_interval", "3"]
    shared += ["--data.init_args.num_workers", "0"]
    out = ["--output", str(tmp_path / "%x-%A_%a.out")]
    env = {**os.environ, **session_env, "PYRAMID_DM_ACCELERATOR": "cpu"}
    args = ["sbatch", "--wait", "--array=0-1", *out, "slurm/sweep.sbatch", str(sweep), *shared]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.out"))
    assert proc.returncode == 0, logs[-3000:]
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert runs == ["lr_sweep-0", "lr_sweep-1"]
    lrs = []
    for name in runs:
        ckpt = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["global_step"] == 3
        lrs.append(ckpt["hyper_parameters"]["lr"])
        run_dir = next((tmp_path / name / "wandb").glob("offline-run-*"))
        assert _wandb_group(run_dir) == "lr_sweep"
    assert lrs == [1e-3, 3e-4]

    ckpt = tmp_path / "lr_sweep-0" / "checkpoints" / "last.ckpt"
    eval_args = ["--sampler", "dpmpp_2m", "--nfe", "2", "--num_samples", "8", "--batch_size", "8", "--num_real", "50"]
    eval_args += ["--kid_subset_size", "4", "--out", str(tmp_path / "eval")]
    args = ["sbatch", "--wait", *out, "slurm/evaluate.sbatch", str(ckpt), *eval_args]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("pyramid_dm-eval*.out"))
    assert proc.returncode == 0, logs[-3000:]
    assert (tmp_path / "eval" / "results.json").is_file()
    assert _wandb_group(next((tmp_path / "eval" / "wandb").glob("offline-run-*"))) == "lr_sweep"


def _wandb_group(run_dir: Path) -> str | None:
    out = subprocess.run(
        ["wandb", "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    runs = [r["run"] for r in map(json.loads, out.stdout.splitlines()) if r.get("type") == "run"]
    return runs[0].get("run_group") if runs else None
