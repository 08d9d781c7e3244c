"""The tables of benchmarks/FEW_STEP.md from the raw rows benchmarks/few_step/cpu.sh wrote.

    python benchmarks/few_step/tables.py [fmnist|photos ...]   # prints Markdown; writes <part>/summary.csv

Rows: <part>/<model>-seed<t>[-<variant>]-sample<s>/results.json, and the teachers' rows at more steps from the
benchmarks that trained them (:data:`TEACHERS`). One line per (model, variant, sampler, steps, grid):
the mean over two training seeds x two sampling seeds of the quality metric(s), the sampling spread (the largest
range over sampling seeds of one trained model) and the training spread (the range of the training seeds' means),
as ``compare`` computes them (:func:`pyramid_dm.commands.compare.spreads`), with NFE and GFLOPs per sample.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
import sys
from pathlib import Path

from pyramid_dm.commands.compare import spreads

HERE = Path(__file__).parent
METRICS = {"fmnist": ["fid_fmnist_clf"], "photos": ["swd_mean", "fid_random"]}
# the teachers' rows at more steps, from the benchmarks that trained them (the same evaluation settings)
TEACHERS = {
    "fmnist": [HERE.parent / "backbones" / "hdit-seed{t}-sample{s}"],
    "photos": [
        HERE.parent / "multiscale" / "cpu-2e13" / (c + "-seed{t}-sample{s}")
        for c in ("pixel_flow_hdit_64", "pyramid_flow_hdit_64")
    ],
}
NAME = re.compile(r"^(?P<model>.+)-seed(?P<seed>\d+)(?:-(?P<variant>[a-z]+))?-sample(?P<sample>\d+)$")


def rows_of(part: str) -> list[dict]:
    out = []
    teachers = [Path(str(p).format(t="*", s="*")) for p in TEACHERS[part]]
    found = [q for p in teachers for q in sorted(p.parent.glob(p.name + "/results.json"))]
    for path in [*sorted((HERE / part).glob("*/results.json")), *found]:
        m = NAME.match(path.parent.name)
        if not m:
            continue
        for row in json.loads(path.read_text())["rows"]:
            out.append({**row, **m.groupdict()})
    return out


def summary(part: str) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows_of(part):
        key = (row["model"], row["variant"] or "", row["sampler"], row["steps"], row["discretization"])
        groups.setdefault(key, []).append(row)
    out = []
    for (model, variant, sampler, steps, grid), members in groups.items():
        entry = {"model": model, "variant": variant, "sampler": sampler, "steps": steps, "grid": grid}
        entry["nfe"] = members[0]["nfe"]
        entry["gflops_per_sample"] = statistics.mean(r["gflops_per_sample"] for r in members)
        entry["runs"] = len(members)
        for metric in METRICS[part]:
            if metric not in members[0]:
                continue
            per_seed: dict[str, list[float]] = {}
            for r in members:
                per_seed.setdefault(r["seed"], []).append(r[metric])
            sampling, training = spreads(per_seed)
            entry[metric] = statistics.mean(r[metric] for r in members)
            entry[f"{metric}_sampling_spread"], entry[f"{metric}_training_spread"] = sampling, training
        out.append(entry)
    return sorted(out, key=lambda e: (e["model"], e["variant"], e["sampler"], e["nfe"]))


def markdown(part: str, entries: list[dict]) -> str:
    metrics = [m for m in METRICS[part] if entries and m in entries[0]]
    head = ["model", "sampler", "grid", "NFE", "GFLOPs/sample", *(f"{m} (sampling, training spread)" for m in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [e["model"] + (f" ({e['variant']})" if e["variant"] else ""), e["sampler"], e["grid"], str(e["nfe"])]
        cells.append(f"{e['gflops_per_sample']:.3f}")
        for m in metrics:
            training = e[f"{m}_training_spread"]
            spread = f"{e[f'{m}_sampling_spread']:.2f}, " + ("-" if training is None else f"{training:.2f}")
            cells.append(f"{e[m]:.2f} ({spread})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(parts: list[str]) -> None:
    for part in parts or ["fmnist", "photos"]:
        entries = summary(part)
        if not entries:
            continue
        with open(HERE / part / "summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(entries[0]))
            writer.writeheader()
            writer.writerows(entries)
        print(f"## {part}\n\n{markdown(part, entries)}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
