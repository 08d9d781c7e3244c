"""Timing a training step: device-synchronised wall-clock, alternating rounds between the steps compared."""

from __future__ import annotations

import statistics
import time

import torch


def time_steps(fn, n: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - start) / n


def images_per_s(fns: dict, args, device: torch.device, dtype, batch: int) -> dict[str, float]:
    """Images/s of each training step in ``fns`` (name -> step of ``batch`` images): ``args.warmup`` untimed steps
    each, then ``args.rounds`` rounds of ``args.steps`` steps, alternating between them so that all see the same
    machine state; the median round. ``args.compile``: each step through ``torch.compile``."""
    if args.compile:
        fns = {k: torch.compile(f) for k, f in fns.items()}
    times = {k: [] for k in fns}
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for fn in fns.values():
            time_steps(fn, args.warmup, device)
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(time_steps(fn, args.steps, device))
    return {k: batch / statistics.median(v) for k, v in times.items()}
