"""A process that starts what a trainer starts (a ``pipe:`` command, a spawned loader worker reading another one),
for tests/test_signals.py to kill: ``python orphans.py MARKER``; the commands are ``sleep MARKER`` and ``MARKER+1``."""

import multiprocessing
import os
import sys
import time

from pyramid_dm.data.streams import PipeStream
from pyramid_dm.signals import loader_worker_signals


def worker(seconds: int) -> None:
    loader_worker_signals()
    PipeStream(f"pipe:exec sleep {seconds}", 600).read()  # a stalled read, as in a worker of a stalled shard


if __name__ == "__main__":
    marker = int(sys.argv[1])
    stream = PipeStream(f"pipe:sleep {marker} | cat", 600)
    child = multiprocessing.get_context("spawn").Process(target=worker, args=(marker + 1,), daemon=True)
    child.start()
    print(os.getpid(), child.pid, flush=True)
    time.sleep(600)
