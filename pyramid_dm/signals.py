"""Where a stop signal may end a run at once, and the children that must end with the process that started them.

- :func:`waiting_on_data` marks the points where the trainer waits for a batch (a stalled ``pipe:`` read can wait
  for minutes). A stop requested there (by :class:`pyramid_dm.stopping.StopOnSignal`) runs at once; a stop requested
  anywhere else waits for the next such point or the end of the step in flight.
- :func:`die_with_parent` asks Linux to kill a process when the one that started it ends (``PR_SET_PDEATHSIG``):
  loader workers are blocked in a stalled read, not in their loop, so they never see the parent go, and a ``pipe:``
  command that sends nothing never hits a broken pipe.
- :func:`pipe_command` wraps a ``pipe:`` command in a shell that takes its whole process group with it when it is
  terminated, and is terminated when its parent ends.
- :func:`loader_worker_signals` is what a loader worker does with the signals Slurm sends to every process of a job.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
WORKER_GRACE_S = 60.0  # a worker that got TERM while its trainer lives ends by itself after this long


class _Waits:
    depth = 0
    pending: Callable[[], None] | None = None  # a stop to run when the next wait begins


@contextlib.contextmanager
def waiting_on_data():
    """The block waits for data; a stop that was requested before it runs first, and one requested inside it runs
    there (the signal handler asks :func:`waiting`)."""
    stop = _Waits.pending
    if stop is not None:
        _Waits.pending = None
        stop()
    _Waits.depth += 1
    try:
        yield
    finally:
        _Waits.depth -= 1


def waiting() -> bool:
    """True while this process waits for data (inside :func:`waiting_on_data`)."""
    return _Waits.depth > 0


def stop_at_next_wait(stop: Callable[[], None] | None) -> None:
    """Run ``stop`` when the next wait for data begins (``None`` cancels it)."""
    _Waits.pending = stop


@functools.lru_cache(maxsize=1)
def _prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGKILL, parent: int | None = None) -> bool:
    """Have the kernel send ``sig`` to this process when the thread that started it ends (Linux; elsewhere False).
    If ``parent`` (its pid) has already gone, this process ends now."""
    prctl = _prctl()
    if prctl is None or prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if parent is not None and os.getppid() != parent:  # the parent ended before the request was made
        os.kill(os.getpid(), sig)
    return True


# ``sh -c GUARD pyramid_dm-pipe CMD``: the command runs in the background of a shell that, when terminated, resets
# its trap and terminates its process group (the command and every process of its pipeline) and itself
_GUARD = 'trap "trap - TERM; kill 0" TERM; sh -c "$1" & wait $!'


def pipe_command(command: str) -> list[str]:
    """The argv that runs a ``pipe:`` shard's shell command so that terminating it ends the whole pipeline."""
    return ["sh", "-c", _GUARD, "pyramid_dm-pipe", command]


def pipe_child_setup() -> None:
    """``preexec_fn`` of a ``pipe:`` command: terminated (and so its pipeline with it) when its parent ends."""
    die_with_parent(signal.SIGTERM)


def prepare_pipe_children() -> None:
    """Resolve ``prctl`` before forking, so that the child only makes the call."""
    _prctl()


def loader_worker_signals(worker_id: int = 0) -> None:
    """Signals in a loader worker (its ``worker_init_fn``).

    Slurm sends its signals to every process of the job step. The trainer alone acts on them: a worker that died of
    TERM mid-step would make the trainer fail with "DataLoader worker exited unexpectedly" before it saved its
    checkpoint. So USR1 (requeue) and INT (a terminal's Ctrl-C reaches the whole process group) are ignored; a first
    TERM starts a timer of :data:`WORKER_GRACE_S` after which the worker ends anyway, and a second TERM (the loader
    shutting its workers down) ends it at once. The worker is killed when the trainer ends, however it ends.
    """
    for name in ("SIGUSR1", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    die_with_parent(signal.SIGKILL, parent.pid if parent is not None else None)
    signal.signal(signal.SIGTERM, _worker_term)


def _worker_term(signum, frame) -> None:
    if getattr(_worker_term, "armed", False):
        os._exit(128 + signum)
    _worker_term.armed = True
    timer = threading.Timer(WORKER_GRACE_S, os._exit, args=(128 + signum,))
    timer.daemon = True
    timer.start()


def kill_loader_workers() -> None:
    """At the trainer's exit: kill the loader workers that are still alive (a worker blocked in a stalled read ignores
    its loader's shutdown, and ignores multiprocessing's exit-time TERM once it got one from Slurm)."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)
