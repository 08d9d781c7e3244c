"""The quality-vs-FLOPs frontier of the 2400-step models of PYRAMID.md: every evaluated budget of every model, mean
FID-proxy over the sampling seeds (with its seed-to-seed range), GFLOPs and ms per sample, a markdown table and a plot.

    python benchmarks/pyramid/frontier.py          # reads benchmarks/pyramid/*/results.json, writes frontier.{md,png}

A budget is on the frontier when no other budget of any model has both fewer (or equal) FLOPs and a lower mean
FID-proxy. The last column compares a budget with the strongest pixel alternative: the best pixel budget (eps or
flow, two seeds) with at most its FLOPs (within 1%; if there is none, the cheapest one above), and calls it better or
worse when the means differ by more than the larger of the two seed ranges.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
# run directory (without the seed suffix) -> model name; the directories hold one or more budgets (rows)
MODELS = [
    (r"^pixel-fashion_mnist_small-2400(-low)?(-seed\d)?$", "pixel (eps)"),
    (r"^pixel-fashion_mnist_small_flow-2400(-low)?(-seed\d)$", "pixel (flow)"),
    (r"^pixel-fashion_mnist_small_flow-2400-euler(-low)?(-seed\d)$", "pixel (flow, flow_euler)"),
    (r"^pixel-fashion_mnist_small_flow-2400-flowgrid(-seed\d)$", "pixel (flow, uniform-t grid)"),
    (r"^pyramid-fashion_mnist-2400-[\d-]+?(-seed\d)?$", "cascade (native, eps)"),
    (r"^pyramid_flow-fashion_mnist-2400-flowgrid-[\d-]+?(-seed\d)$", "pyramid_flow (uniform-t grid)"),
    (r"^pyramid_flow-fashion_mnist-2400-[\d-]+?(-seed\d)$", "pyramid_flow"),
]


def seed_of(name: str) -> int:
    m = re.search(r"-seed(\d)$", name)
    return int(m.group(1)) if m else 0  # the first 2400-step runs were sampled with seed 0 and carry no suffix


# flow_trend.sh: the same pair of models at 16x16 and at 800 steps; each group is compared within itself
TREND = [
    (r"^trend-pixel-flow16-2400-seed\d$", "16x16, 2400 steps: pixel (flow)"),
    (r"^trend-pyramid_flow16-2400-[\d-]+-seed\d$", "16x16, 2400 steps: pyramid_flow"),
    (r"^trend-pixel-flow-800-seed\d$", "32x32, 800 steps: pixel (flow)"),
    (r"^trend-pyramid_flow-800-[\d-]+-seed\d$", "32x32, 800 steps: pyramid_flow"),
]


def collect(models=MODELS) -> dict:
    """{(model, sampler, steps tuple): {seed: row}}"""
    found: dict = defaultdict(dict)
    for path in sorted(HERE.glob("*/results.json")):
        name = path.parent.name
        model = next((label for pattern, label in models if re.match(pattern, name)), None)
        if model is None:
            continue
        for row in json.loads(path.read_text())["rows"]:
            steps = tuple(row["steps"]) if isinstance(row["steps"], list) else (row["steps"],)
            found[(model, row["sampler"], steps)].setdefault(seed_of(name), row)
    return found


def summarise(found: dict) -> list[dict]:
    out = []
    for (model, sampler, steps), by_seed in found.items():
        fids = [r["fid_fmnist_clf"] for _, r in sorted(by_seed.items())]
        ms = [1000 * r["seconds_per_sample"] for _, r in sorted(by_seed.items())]
        row = next(iter(by_seed.values()))
        out.append(
            {
                "model": model,
                "sampler": sampler,
                "steps": "/".join(map(str, steps)),
                "nfe": row["nfe"],
                "gflops": row["gflops_per_sample"],
                "ms": sum(ms) / len(ms),
                "fid": sum(fids) / len(fids),
                "fids": fids,
                "spread": max(fids) - min(fids),
                "seeds": sorted(by_seed),
            }
        )
    out.sort(key=lambda r: (r["gflops"], r["fid"]))
    for r in out:  # on the frontier unless another budget has no more FLOPs and a lower mean FID-proxy
        r["frontier"] = not any(o["gflops"] <= r["gflops"] + 1e-9 and o["fid"] < r["fid"] for o in out)
    return out


def table(rows: list[dict], ref: dict, group=lambda r: "") -> list[str]:
    """Markdown rows; each non-pixel budget is compared with the best pixel budget of its group at no more FLOPs."""
    pixels = [r for r in rows if "pixel (" in r["model"] and len(r["seeds"]) > 1]
    lines = [
        "| model | sampler | steps | NFE | GFLOPs/sample | vs pixel@20 | ms/sample | FID-proxy (mean) | per seed | "
        "frontier | vs the best pixel budget at <= its FLOPs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = ""
        if "pixel (" not in r["model"]:
            peers = [p for p in pixels if group(p) == group(r)]
            within = [p for p in peers if p["gflops"] <= 1.01 * r["gflops"]]  # pixel with at most the same FLOPs
            above = [p for p in peers if p["gflops"] > 1.01 * r["gflops"]]
            if within or above:
                p = (
                    min(within, key=lambda p: p["fid"])
                    if within
                    else min(above, key=lambda p: (round(p["gflops"], 3), p["fid"]))
                )
                margin = max(p["spread"], r["spread"])
                gap = p["fid"] - r["fid"]
                word = "better" if gap > margin else ("worse" if -gap > margin else "within spread")
                verdict = f"{word} ({p['model']}@{p['steps']}: {gap:+.2f}, spread {margin:.2f})"
        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['nfe']} | {r['gflops']:.2f} | "
            f"{100 * r['gflops'] / ref['gflops']:.0f}% | {r['ms']:.1f} | {r['fid']:.2f} | "
            f"{' / '.join(f'{f:.2f}' for f in r['fids'])} | {'**yes**' if r['frontier'] else ''} | {verdict} |"
        )
    return lines


def main() -> None:
    rows = summarise(collect())
    ref = next(r for r in rows if r["model"] == "pixel (eps)" and r["steps"] == "20")
    lines = table(rows, ref)
    trend = collect(TREND)
    if trend:
        groups = defaultdict(list)
        for r in summarise(trend):
            groups[r["model"].split(":")[0]].append(r)
        for name, members in groups.items():
            members = summarise({k: v for k, v in trend.items() if k[0].startswith(name)})
            ref20 = next((r for r in members if "pixel" in r["model"] and r["steps"] == "20"), members[-1])
            lines += ["", f"**{name}** (FLOPs relative to this group's pixel@20)", "", *table(members, ref20)]
    (HERE / "frontier.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [r for r in rows if r["model"] == model]
        ax.errorbar(
            [r["gflops"] for r in pts],
            [r["fid"] for r in pts],
            yerr=[[r["fid"] - min(r["fids"]) for r in pts], [max(r["fids"]) - r["fid"] for r in pts]],
            fmt="o",
            capsize=3,
            label=model,
        )
    front = [r for r in rows if r["frontier"]]
    ax.plot([r["gflops"] for r in front], [r["fid"] for r in front], "k--", lw=1, label="frontier")
    ax.axvline(ref["gflops"] / 2, color="grey", lw=0.8, ls=":", label="50% of pixel@20")
    ax.set_xlabel("GFLOPs per sample")
    ax.set_ylabel("FID-proxy (fmnist_clf), mean of seeds; bars: seed range")
    ax.set_title("Fashion-MNIST 32x32, 2400 training steps, DPM-Solver++(2M) unless named")
    ax.set_yscale("log")  # the eps models sit 10x above the flow ones
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "frontier.png", dpi=120)


if __name__ == "__main__":
    main()
