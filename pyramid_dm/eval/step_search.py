"""Multi-objective search of width policies (library side of ``search-steps``).

DDSM searches with pymoo's NSGA-II on a weighted sum of FID and MACs, from a 1000-integer genome, nothing persisted.
Here the search is Optuna's NSGA-II sampler (Deb et al. 2002) on the two objectives (FID-proxy, GFLOPs per sample),
returning their Pareto front; the study lives in an Optuna journal file (``JournalFileBackend``), appended after every
trial and safe for several processes on one (shared) file system, so a killed or requeued job resumes where it
stopped and a Slurm array of workers shares one study. We use Optuna rather than a hand-written genetic algorithm for
exactly that persistence and concurrency.

The genome (:class:`SearchSpace`) is one policy per level: ``log_snr`` (K breakpoints in the budget's log-SNR range
and K + 1 widths: serves any sampler) or ``per_step`` (one width per step: DDSM's, for this budget only). The first
trials are the baselines, enqueued once when the study is created: every uniform width (the full model among them)
and DDSM's pilot study (one window of the log-SNR range at the smallest width, the rest at full width).

A worker that dies leaves its trial RUNNING; the next worker with the same identity (a requeued Slurm job keeps its
job id) or on the same host where that process is gone marks it FAIL and enqueues its parameters again, so no finished
trial is lost or repeated (:func:`recover_stale`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import compat
from ..data.manifest import atomic_write_bytes
from ..engine.step_policy import LevelPolicy, StepPolicy, log_snr
from ..registry import Registry

STUDY_NAME = "search-steps"


class Genome:
    """How a level's width policy is encoded as trial parameters (a registered part of :data:`GENOMES`)."""

    name = "genome"
    reads_breakpoints = False  # whether ``--breakpoints`` means anything to it (recorded in the study's metadata)

    def check(self, space: SearchSpace) -> None:
        """A ValueError if the search space does not suit this genome."""

    def suggest(self, trial, space: SearchSpace, lv: int) -> dict:
        raise NotImplementedError

    def level_policy(self, params: dict, space: SearchSpace, lv: int) -> LevelPolicy:
        raise NotImplementedError

    def params(self, segments: list[tuple[float, float]], space: SearchSpace, lv: int) -> dict:
        """Parameters of level ``lv`` having width w up to each end fraction of its range: ``[(end, w), ...]``."""
        raise NotImplementedError

    def has_pilot(self, space: SearchSpace) -> bool:
        """Whether DDSM's pilot policies (three segments) can be written in this genome."""
        return True


class LogSnrGenome(Genome):
    """K breakpoints in the budget's log-SNR range and K + 1 widths per level: serves any sampler."""

    name = "log_snr"
    reads_breakpoints = True

    def check(self, space):
        if space.breakpoints < 1:
            raise ValueError(f"--breakpoints must be >= 1, got {space.breakpoints}")

    def suggest(self, trial, space, lv):
        lo, hi = space.log_snr_range(lv)
        k_max, widths = space.breakpoints, space.widths
        out = {f"l{lv}_w{k}": trial.suggest_categorical(f"l{lv}_w{k}", widths) for k in range(k_max + 1)}
        out.update({f"l{lv}_b{k}": trial.suggest_float(f"l{lv}_b{k}", lo, hi) for k in range(k_max)})
        return out

    def level_policy(self, params, space, lv):
        ws = [params[f"l{lv}_w{k}"] for k in range(space.breakpoints + 1)]
        return LevelPolicy(sorted(params[f"l{lv}_b{k}"] for k in range(space.breakpoints)), ws)

    def params(self, segments, space, lv):
        lo, hi = space.log_snr_range(lv)
        k_max = space.breakpoints
        ends = [end for end, _ in segments[:-1]][:k_max]
        ends += [1.0] * (k_max - len(ends))
        widths = [w for _, w in segments] + [segments[-1][1]] * (k_max + 1 - len(segments))
        out = {f"l{lv}_w{k}": widths[k] for k in range(k_max + 1)}
        out.update({f"l{lv}_b{k}": lo + ends[k] * (hi - lo) for k in range(k_max)})
        return out

    def has_pilot(self, space):
        return space.breakpoints >= 2


class PerStepGenome(Genome):
    """One width per step of the budget (DDSM's genome): serves that sampler and step count only."""

    name = "per_step"

    def suggest(self, trial, space, lv):
        return {f"l{lv}_s{i}": trial.suggest_categorical(f"l{lv}_s{i}", space.widths) for i in range(space.steps(lv))}

    def level_policy(self, params, space, lv):
        return LevelPolicy.per_step([params[f"l{lv}_s{i}"] for i in range(space.steps(lv))], space.sigmas[lv])

    def params(self, segments, space, lv):
        n = space.steps(lv)
        return {f"l{lv}_s{i}": next(w for end, w in segments if (i + 0.5) / n < end or end >= 1) for i in range(n)}


GENOMES: Registry[Genome] = Registry("genome", {"log_snr": LogSnrGenome(), "per_step": PerStepGenome()})


@dataclass
class SearchSpace:
    """The genome of a width policy for a model with ``widths`` (largest first) and ``num_levels`` levels.
    ``sigmas[l]``: level l's sampling grid (the budget's, noisiest first), which bounds the breakpoints (``log_snr``)
    or places them between the steps (``per_step``); ``genome`` names a :data:`GENOMES` part."""

    widths: list[float]
    sigmas: list[list[float]]
    genome: str = "log_snr"
    breakpoints: int = 3
    samplers: list[str] | None = None  # the budget's samplers per level (recorded in per_step policies)

    def __post_init__(self):
        self.kind = GENOMES.lookup(self.genome)
        self.kind.check(self)

    @property
    def num_levels(self) -> int:
        return len(self.sigmas)

    def steps(self, level: int) -> int:
        return len(self.sigmas[level]) - 1

    def log_snr_range(self, level: int) -> tuple[float, float]:
        lams = [log_snr(s) for s in self.sigmas[level] if s > 0]
        return min(lams), max(lams)

    def policy(self, params: dict) -> StepPolicy:
        """The policy a trial's parameters encode."""
        levels = [self.kind.level_policy(params, self, lv) for lv in range(self.num_levels)]
        steps = [self.steps(lv) for lv in range(self.num_levels)]
        return StepPolicy(levels, self.genome, budget={"samplers": list(self.samplers or []), "steps": steps})

    def suggest(self, trial) -> StepPolicy:
        """Draw a trial's parameters (Optuna's define-by-run) and return its policy."""
        params = {}
        for lv in range(self.num_levels):
            params.update(self.kind.suggest(trial, self, lv))
        return self.policy(params)

    def params(self, segments: Callable[[int], list[tuple[float, float]]]) -> dict:
        """Parameters of the policy whose level l has width w on the fractions [a, b) of its log-SNR range (or of its
        steps) given by ``segments(l)`` = [(b, w), ...] (each segment's end fraction and width, in order)."""
        out = {}
        for lv in range(self.num_levels):
            out.update(self.kind.params(segments(lv), self, lv))
        return out

    def baselines(self) -> list[tuple[str, dict]]:
        """(name, parameters) of every uniform width and of DDSM's pilot study: a quarter of the log-SNR range (or of
        the steps) at the smallest width, the rest at full width."""
        out = [(f"uniform {w:g}", self.params(lambda lv, w=w: [(1.0, w)])) for w in self.widths]
        if len(self.widths) > 1 and self.kind.has_pilot(self):
            full, small = self.widths[0], self.widths[-1]
            for a in (0.0, 0.25, 0.5, 0.75):
                segs = [(a, full), (a + 0.25, small), (1.0, full)] if a > 0 else [(0.25, small), (1.0, full)]
                out.append((f"pilot {small:g} on [{a:g}, {a + 0.25:g}) of log-SNR", self.params(lambda lv, s=segs: s)))
        return out


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (works across processes and, on most cluster file systems, hosts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def worker_identity() -> str:
    """Who runs trials: the Slurm job (kept across a requeue) and array task, else host and process."""
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm:{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{task}" if task else f"slurm:{job}"
    return f"{socket.gethostname()}:{os.getpid()}"


def _gone(identity: str, me: str) -> bool:
    """Whether the worker ``identity`` is certainly not running any more (seen from worker ``me``)."""
    if identity == me:
        return True
    host, _, pid = identity.rpartition(":")
    if identity.startswith("slurm:") or host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def open_study(study_dir: Path, meta: dict, space: SearchSpace, population: int, seed: int):
    """The study in ``study_dir`` (created with its baselines, or loaded; ``meta`` must match what it was created
    for: ValueError naming the differing keys), with stale trials of dead workers recovered."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir.mkdir(parents=True, exist_ok=True)
    me = worker_identity()
    with file_lock(study_dir / ".lock"):
        meta_path = study_dir / "study.json"
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            differ = sorted(k for k in {*old, *meta} if old.get(k) != meta.get(k))
            if differ:
                shown = "; ".join(f"{k}: {old.get(k)!r} there, {meta.get(k)!r} here" for k in differ[:4])
                raise ValueError(
                    f"study {study_dir} was created for another search ({shown}); use a new --study directory"
                )
        journal = study_dir / "journal.log"
        check_journal(journal)
        try:
            storage = JournalStorage(JournalFileBackend(str(journal)))
        except OSError as e:
            raise ValueError(f"study journal {journal} cannot be opened for writing ({e.strerror or e})") from None
        task = int(os.environ.get("SLURM_ARRAY_TASK_ID", "0") or 0)  # array workers explore from different seeds
        sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed + 1000 * task)
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=storage,
            sampler=sampler,
            directions=["minimize", "minimize"],
            load_if_exists=True,
        )
        if not meta_path.is_file():
            for name, params in space.baselines():
                study.enqueue_trial(params, user_attrs={"baseline": name})
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta, indent=1) + "\n")
            tmp.replace(meta_path)
        recover_stale(study, me)
    return study


def check_journal(path: Path) -> None:
    """A journal whose last record was cut mid-line (a worker killed while writing) keeps its complete records: the
    cut line is moved aside to ``<journal>.cut`` and a warning says so. A damaged record before the last is a
    ValueError naming the file and line (the study cannot be trusted past it)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # a well-formed journal ends with a newline: tail is empty
    for number, line in enumerate(complete, 1):
        try:
            json.loads(line)
        except ValueError:
            raise ValueError(
                f"study journal {path}: line {number} of {len(complete) + bool(tail)} is not a complete record; the "
                "study cannot be read past it: start a new --study directory (the trials so far are in trials.csv)"
            ) from None
    if tail:
        cut = path.with_name(path.name + ".cut")
        cut.write_bytes(tail)
        atomic_write_bytes(path, data[: len(data) - len(tail)])
        print(
            f"warning: study journal {path}: its last record was cut mid-line (a worker killed while writing); kept "
            f"the {len(complete)} complete records and moved the cut one to {cut}",
            file=sys.stderr,
        )


def recover_stale(study, me: str) -> list[int]:
    """Mark RUNNING trials of dead workers FAIL and enqueue their parameters again; returns their numbers."""
    from optuna.trial import TrialState

    stale = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _gone(t.user_attrs.get("worker", ""), me):
            compat.fail_trial(study, t)
            attrs = {"retry_of": t.number, **{k: v for k, v in t.user_attrs.items() if k == "baseline"}}
            study.enqueue_trial(t.params, user_attrs=attrs)
            stale.append(t.number)
    return stale


def run_search(
    study,
    space: SearchSpace,
    objective: Callable[[StepPolicy], dict],
    n_trials: int,
    on_trial: Callable[[object, StepPolicy, dict], None] | None = None,
    progress: bool = True,
) -> int:
    """Run trials until the study holds ``n_trials`` finished ones (this worker's share when several run);
    ``objective(policy)`` returns a dict with ``fid`` and ``gflops_per_sample`` (and anything to record). Returns the
    number of trials this worker finished."""
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    me, done = worker_identity(), 0

    def busy() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)))

    with tqdm(total=n_trials, desc="search-steps", disable=not progress) as bar:
        bar.update(len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
        while busy() < n_trials:
            trial = study.ask()
            trial.set_user_attr("worker", me)
            policy = space.suggest(trial)
            result = objective(policy)
            for key, value in result.items():
                trial.set_user_attr(key, value)
            values = [result["fid"], result["gflops_per_sample"]]
            if not all(math.isfinite(v) for v in values):
                study.tell(trial, state=TrialState.FAIL)
                continue
            study.tell(trial, values)
            done += 1
            bar.update(1)
            if on_trial is not None:
                on_trial(trial, policy, result)
    return done


def front(study) -> list:
    """The Pareto-optimal finished trials, by GFLOPs; of trials with equal objectives, the first (a baseline when
    one is among them)."""
    out, seen = [], set()
    for t in sorted(study.best_trials, key=lambda t: (t.values[1], t.values[0], "baseline" not in t.user_attrs)):
        if tuple(t.values) not in seen:
            seen.add(tuple(t.values))
            out.append(t)
    return out
