"""Read back what a W&B run logged, from its local (offline or synced) run directory, without a W&B account."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def run_history(run_dir: str | Path, prefix: str = "") -> list[dict]:
    """History rows (one dict per ``log`` call) of a local run directory (``.../wandb/offline-run-*``), keeping the
    keys that start with ``prefix`` plus ``trainer/global_step``; rows without such keys are dropped."""
    proc = subprocess.run(
        ["wandb", "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cannot read W&B run {run_dir}: {proc.stderr.strip()[-500:]}")
    rows = []
    for line in proc.stdout.splitlines():
        record = json.loads(line)
        if record.get("type") != "history":
            continue
        item = record["history"]["item"]
        keep = {k: v for k, v in item.items() if k.startswith(prefix) and not k.startswith("_")} if prefix else item
        if keep:
            rows.append({"trainer/global_step": item.get("trainer/global_step"), **keep})
    return rows


def run_summary(run_dir: str | Path) -> dict:
    """The summary of a local run directory (``wandb leet inspect --summary``): each key's last value, or the
    ``{"min"/"max": ..., "last": ...}`` that ``define_metric`` asked for."""
    proc = subprocess.run(
        ["wandb", "leet", "inspect", "--summary", "--json", str(run_dir)], capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cannot read W&B run {run_dir}: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout).get("summary", {})
