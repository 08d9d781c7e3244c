"""The unchanged slurm/fit.sbatch on a real Slurm cluster (2 emulated nodes on this machine, started by the fixture).

Needs root (Slurm daemons, apt); CI runs as root. Overrides reach the script only through sbatch arguments and the
environment, as on a production cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from pyramid_dm.eval.history import run_history

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


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.5)


def job_field(job: str, field: str) -> str:
    info = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return next((w.split("=", 1)[1] for w in info.split() if w.startswith(f"{field}=")), "")


def rank_pids(root: Path) -> list[int]:
    """The training processes of the job writing to ``root`` (not srun or the batch script)."""
    pids = subprocess.run(["pgrep", "-f", f"exp.root {root}"], capture_output=True, text=True).stdout.split()
    argv0 = lambda pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]  # noqa: E731
    return [int(pid) for pid in pids if Path(f"/proc/{pid}").exists() and b"python" in argv0(pid)]


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
        pythons = rank_pids(tmp_path)
        assert first_ckpt.exists() and len(pythons) >= 2, job_log(tmp_path)[-2000:]
        killed_at = time.time()
        os.kill(pythons[-1], 9)
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


@pytest.mark.parametrize("preempt", ["SIGUSR1", "scontrol requeue"])
def test_a_requeued_job_resumes_its_run_from_the_newest_checkpoint(
    cluster, session_env, digits_shards, tmp_path, preempt
):
    """Mid-training, the job gets what Slurm sends 90 s before its time limit (SIGUSR1: Lightning saves hpc_ckpt_1
    and requeues it), or is requeued outright (as preemption or a node failure would, with no time to save). It comes
    back, resumes from the newest checkpoint without being told, ends at the requested step, and W&B holds one run
    whose steps continue: no gap, no restart from zero."""
    steps = 24
    job = sbatch(
        tmp_path,
        session_env,
        ["--nodes", "1", "--ntasks-per-node", "2", "--time", "10"],
        "--trainer.max_steps",
        str(steps),
        "--trainer.log_every_n_steps",
        "1",
        wait=False,
    )
    run = tmp_path / "quickstart"
    last = run / "checkpoints" / "last.ckpt"
    try:
        wait_for(last.exists, 120, "the first checkpoint")
        if preempt == "SIGUSR1":
            subprocess.run(["scancel", "--signal=USR1", job], check=True)  # to the job's steps, as --signal does
        else:
            subprocess.run(["scontrol", "requeue", job], check=True)
        wait_for(lambda: job_field(job, "Restarts") == "1" and job_field(job, "JobState") == "PENDING", 120, "requeue")
        saved = list(run.glob("hpc_ckpt_*.ckpt")) + list(last.parent.glob("*.ckpt"))
        # what the requeued job must resume from (ties, e.g. best and last written in one clock tick, go by name)
        newest = max(saved, key=lambda p: (p.stat().st_mtime_ns, p.name))
        resume_step = torch.load(newest, weights_only=False)["global_step"]  # before the job writes it again
        # Slurm makes a requeued job wait about two minutes (Reason=BeginTime) before it may run again; on a real
        # cluster the scheduler starts it when it can. Here it may start at once.
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
        wait_for(lambda: job_field(job, "JobState") not in ("PENDING", "RUNNING", "COMPLETING"), 240, "the job's end")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    log = job_log(tmp_path)
    assert job_field(job, "JobState") == "COMPLETED" and job_field(job, "Restarts") == "1", log[-3000:]
    assert (run / "hpc_ckpt_1.ckpt").exists() == (preempt == "SIGUSR1")  # Lightning's requeue checkpoint
    assert f"resuming from {newest}" in log, log[-3000:]
    assert resume_step > 0
    assert torch.load(last, weights_only=False)["global_step"] == steps  # the final step is trained and saved

    parts = sorted((run / "wandb").glob("offline-run-*"))  # one per start of the job, sorted by start time
    assert len(parts) == 2 and len({p.name.split("-", 3)[-1] for p in parts}) == 1, parts  # one W&B run id
    assert parts[0].name.endswith(f"-quickstart-pyramid_dm_test-{job}")  # derived from the job
    rows = [run_history(p) for p in parts]  # every row, with W&B's own _step
    trained = [[r["trainer/global_step"] for r in part if "train/loss" in r] for part in rows]
    # Training rows log the step they start from: 0..steps-1. The second part starts where the checkpoint it
    # resumed from ends (not at 0); together the parts hold every step; only steps after that checkpoint repeat.
    assert trained[1] == list(range(resume_step, steps))
    assert set(range(resume_step)) <= set(trained[0])
    # W&B's own step goes on after the first part's rows, so `wandb sync --id` can put the parts together.
    assert min(r["_step"] for r in rows[1]) == max(r["_step"] for r in rows[0]) + 1


def test_a_hung_rank_fails_the_job_after_the_collective_timeout(cluster, session_env, digits_shards, tmp_path):
    """A rank that stops (alive, but never reaching the next all-reduce) ends the job once the other rank's
    collective times out (PYRAMID_DM_COLLECTIVE_TIMEOUT), instead of holding the nodes to the time limit."""
    env = {**session_env, "PYRAMID_DM_COLLECTIVE_TIMEOUT": "0:00:15"}
    job = sbatch(tmp_path, env, ["--nodes", "2", "--time", "10"], "--trainer.max_steps", "100000", wait=False)
    stopped = None
    try:
        wait_for((tmp_path / "quickstart" / "checkpoints" / "last.ckpt").exists, 120, "the first checkpoint")
        stopped = rank_pids(tmp_path)[-1]
        os.kill(stopped, signal.SIGSTOP)
        stopped_at = time.time()
        wait_for(lambda: job_field(job, "JobState") not in ("RUNNING", "COMPLETING"), 120, "the job's end")
        elapsed = time.time() - stopped_at
    finally:
        subprocess.run(["scancel", job], capture_output=True)
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
    assert job_field(job, "JobState") == "FAILED", job_log(tmp_path)[-2000:]
    assert 15 <= elapsed < 60, f"the job ended {elapsed:.0f} s after a rank hung, with a 15 s collective timeout"
    # gloo words it "Timed out waiting 15000ms for recv" or "Application timeout caused pair closure"
    assert re.search(r"RuntimeError: .*(Timed out waiting 15000ms|timeout caused pair closure)", job_log(tmp_path))


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


def _study_trials(study: Path) -> list:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not (study / "journal.log").is_file():
        return []
    storage = JournalStorage(JournalFileBackend(str(study / "journal.log")))
    try:
        return optuna.load_study(study_name="search-steps", storage=storage).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return []


def test_a_search_array_shares_one_study_and_a_requeued_task_loses_or_repeats_no_trial(
    cluster, session_env, digits_shards, tmp_path
):
    """slurm/search.sbatch as a 2-task array: both tasks work on one study; task 0 is requeued mid-search (killed,
    as preemption would), comes back as the same worker, fails its unfinished trial, runs that candidate again and
    the study ends with the requested trials, the finished ones untouched."""
    from optuna.trial import TrialState
    from test_step_aware import fit_supernet

    ckpt = fit_supernet(tmp_path / "runs", session_env, 10) / "checkpoints" / "last.ckpt"
    study, trials = tmp_path / "study", 10
    search = ["--study", str(study), "--sampler", "ddim", "--steps", "10", "--trials", str(trials), "--population", "4"]
    search += ["--num_samples", "16", "--batch_size", "16", "--num_real", "100"]
    out = ["--output", str(tmp_path / "%x-%A_%a.out")]
    env = {**os.environ, **session_env, "PYRAMID_DM_ACCELERATOR": "cpu"}
    args = ["sbatch", "--parsable", "--array=0-1", "--time", "10", *out, "slurm/search.sbatch", str(ckpt), *search]
    job = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60).stdout.strip()
    task0, task1 = f"{job}_0", f"{job}_1"
    complete = lambda: [t for t in _study_trials(study) if t.state == TrialState.COMPLETE]  # noqa: E731
    try:
        wait_for(lambda: len(complete()) >= 4, 240, "four finished trials")
        before = {t.number: t.values for t in complete()}
        subprocess.run(["scontrol", "requeue", task0], check=True)
        wait_for(lambda: job_field(task0, "Restarts") == "1", 120, "the requeue")
        subprocess.run(["scontrol", "update", f"JobId={task0}", "StartTime=now"], check=True)
        ended = lambda t: job_field(t, "JobState") not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED")  # noqa: E731
        wait_for(lambda: ended(task0) and ended(task1), 300, "both tasks' end")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("pyramid_dm-search-*.out"))
    assert job_field(task0, "JobState") == job_field(task1, "JobState") == "COMPLETED", logs[-3000:]
    assert "restart 1" in logs
    final = _study_trials(study)
    done = [t for t in final if t.state == TrialState.COMPLETE]
    assert trials <= len(done) <= trials + 1  # the two workers may each start one while the last one finishes
    assert {t.number: t.values for t in done if t.number in before} == before  # no finished trial lost
    workers = {t.user_attrs["worker"] for t in done}
    assert workers == {f"slurm:{job}_0", f"slurm:{job}_1"}  # both tasks worked on the one study
    for failed in (t for t in final if t.state == TrialState.FAIL):  # the trial the requeue killed
        retries = [t for t in final if t.user_attrs.get("retry_of") == failed.number]
        assert len(retries) == 1 and retries[0].params == failed.params
    retried = {t.user_attrs.get("retry_of") for t in final} - {None}
    assert not retried & {t.number for t in done}  # no finished trial was run again
    assert (study / "front.json").is_file() and list((study / "policies").glob("front-*.json"))
