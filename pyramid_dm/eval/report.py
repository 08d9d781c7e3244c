"""Evaluation tables (JSON + CSV) and the quality-vs-compute Pareto plot (PNG via matplotlib)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..data.manifest import atomic_write_bytes

COST_AXES = {"gflops_per_sample": "GFLOPs per sample", "seconds_per_sample": "seconds per sample"}


def write_table(rows: list[dict], meta: dict, out_dir: Path) -> tuple[Path, Path]:
    """``results.json`` ({meta, rows}) and ``results.csv`` (one row per sampler x steps), written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    atomic_write_bytes(json_path, json.dumps({"meta": meta, "rows": rows}, indent=2).encode())
    write_csv(csv_path, rows)
    return json_path, csv_path


def write_csv(path: Path, rows: list[dict]) -> None:
    """``rows`` as a CSV file (the union of their keys as columns, in first-seen order), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def pareto_front(rows: list[dict], cost: str, quality: str) -> list[int]:
    """Indices of the rows no other row beats on both ``cost`` and ``quality`` (lower is better for both), by cost."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i][cost], rows[i][quality]))
    front, best = [], float("inf")
    for i in order:
        if rows[i][quality] < best:
            front.append(i)
            best = rows[i][quality]
    return front


def pareto_figure(rows: list[dict], quality: str, title: str = ""):
    """Quality (lower is better) against FLOPs and wall-clock per sample, one line per sampler, NFE annotated,
    the Pareto front dashed; log quality axis when the values span more than 20x. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(COST_AXES), figsize=(11, 4.2))
    samplers = list(dict.fromkeys(row["sampler"] for row in rows))
    for ax, (cost, label) in zip(axes, COST_AXES.items()):
        for name in samplers:
            pts = sorted((r[cost], r[quality], int(r.get("nfe") or r["steps"])) for r in rows if r["sampler"] == name)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
            for x, y, steps in pts:
                ax.annotate(str(steps), (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7)
        front = [rows[i] for i in pareto_front(rows, cost, quality)]
        ax.plot([r[cost] for r in front], [r[quality] for r in front], "k--", lw=0.8, label="Pareto front")
        ax.set_xscale("log")
        readable_log_ticks(ax.xaxis, [r[cost] for r in rows])
        values = [r[quality] for r in rows]
        if min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{quality} (lower is better)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"{quality} vs compute (numbers: NFE)", fontsize=10)
    fig.tight_layout()
    return fig


def readable_log_ticks(axis, values: list[float]) -> None:
    """Labels on a log axis that do not overlap: 1-2-5 per decade over a short span (matplotlib labels every minor
    tick there, in scientific notation, and the seconds axis of a sweep was unreadable), one per decade over a long
    one; plain numbers, minor ticks unlabelled."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in values if v and v > 0]
    lo, hi = (min(positive), max(positive)) if positive else (1.0, 1.0)
    decades = math.log10(hi / lo)
    if decades < 1:  # within a decade a 1-2-5 tick may not fall inside the data at all: four rounded values across it
        steps = [lo * (hi / lo) ** (i / 3) for i in range(4)]
        axis.set_major_locator(FixedLocator(sorted({float(f"{v:.2g}") for v in steps})))
    else:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 3 else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def pareto_plot(rows: list[dict], quality: str, path: Path, title: str = "") -> Path:
    """:func:`pareto_figure` written as a PNG (atomically; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = pareto_figure(rows, quality, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
