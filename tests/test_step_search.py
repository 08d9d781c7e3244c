"""The step-policy search (NSGA-II over width policies, :mod:`pyramid_dm.eval.step_search`) on a synthetic objective
with a known Pareto front: it recovers the front, refuses a study made for another search, and resumes a study whose
worker was killed mid-trial without losing or repeating a finished trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyramid_dm.engine.step_policy import StepPolicy
from pyramid_dm.eval.step_search import SearchSpace, front, open_study, run_search

ROOT = Path(__file__).resolve().parents[1]

A = [1.0, 2.0, 4.0, 8.0, 16.0]  # the synthetic objective's cost of running step i at half width


def synthetic(policy: StepPolicy) -> dict:
    """Known front: with c of 5 steps at half width, the best quality puts them at the c cheapest steps."""
    ws = policy.levels[0].step_widths
    return {"fid": sum(a for a, w in zip(A, ws) if w < 1), "gflops_per_sample": sum(ws)}


def synthetic_space() -> SearchSpace:
    return SearchSpace([1.0, 0.5], [[16.0, 8.0, 4.0, 2.0, 1.0, 0.0]], "per_step")


def test_the_search_recovers_the_known_pareto_front_of_a_synthetic_objective(tmp_path):
    space = synthetic_space()
    study = open_study(tmp_path / "study", {"objective": "synthetic"}, space, population=8, seed=0)
    run_search(study, space, synthetic, 80, progress=False)
    found = sorted(tuple(t.values) for t in front(study))
    true = sorted((sum(A[:c]), 5 - 0.5 * c) for c in range(6))
    assert found == true
    names = {t.user_attrs.get("baseline") for t in study.trials}
    assert {"uniform 1", "uniform 0.5"} <= names and any(n and n.startswith("pilot") for n in names)


def test_a_study_made_for_another_objective_is_refused(tmp_path):
    space = synthetic_space()
    open_study(tmp_path / "s", {"checkpoint_sha256": "a", "num_samples": 10}, space, 8, 0)
    with pytest.raises(ValueError, match="created for another search.*checkpoint_sha256"):
        open_study(tmp_path / "s", {"checkpoint_sha256": "b", "num_samples": 10}, space, 8, 0)


WORKER = """
import sys, time
sys.path.insert(0, {tests!r})
from test_step_search import synthetic, synthetic_space
from pyramid_dm.eval.step_search import open_study, run_search
space = synthetic_space()
study = open_study(__import__("pathlib").Path({study!r}), {{"objective": "synthetic"}}, space, 8, 0)
calls = [0]
def slow(policy):
    calls[0] += 1
    time.sleep(600 if {hang} and calls[0] > 4 else 0.3)  # the first run's 5th trial is still running when killed
    return synthetic(policy)
run_search(study, space, slow, {trials}, progress=False)
"""


def test_a_search_killed_mid_way_resumes_its_study_without_losing_or_repeating_a_finished_trial(tmp_path):
    from optuna.trial import TrialState

    script = lambda hang: WORKER.format(tests=str(ROOT / "tests"), study=str(tmp_path / "study"), trials=12, hang=hang)  # noqa: E731
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", script(True)], env=env, cwd=ROOT)
    load = lambda: open_study(tmp_path / "study", {"objective": "synthetic"}, synthetic_space(), 8, 0)  # noqa: E731
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.1)
        if (tmp_path / "study" / "journal.log").exists():
            import optuna
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            storage = JournalStorage(JournalFileBackend(str(tmp_path / "study" / "journal.log")))
            study = optuna.load_study(study_name="search-steps", storage=storage)
            states = [t.state for t in study.get_trials(deepcopy=False)]
            if states.count(TrialState.COMPLETE) >= 4 and TrialState.RUNNING in states:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.values for t in study.get_trials(states=(TrialState.COMPLETE,))}
    killed = [t for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert len(killed) == 1 and len(before) >= 4
    rerun = subprocess.run([sys.executable, "-c", script(False)], env=env, cwd=ROOT, timeout=300)
    assert rerun.returncode == 0
    study = load()
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 12
    assert {t.number: t.values for t in done if t.number in before} == before  # nothing lost
    assert study.trials[killed[0].number].state == TrialState.FAIL
    retried = [t for t in done if t.user_attrs.get("retry_of") == killed[0].number]
    # the killed candidate, run once more (its genes drawn before the kill are kept; a kill mid-draw leaves fewer)
    assert len(retried) == 1 and killed[0].params.items() <= retried[0].params.items()
