# ruff: noqa: E501, E731, B023
"""The tables of benchmarks/MULTISCALE.md from the raw rows:
python benchmarks/multiscale/tables.py benchmarks/multiscale/cpu-2e13/compare.json benchmarks/multiscale/cpu-2e13/coarse_first.json
"""

import json
import statistics
import sys

from pyramid_dm.commands.compare import spreads as seed_spreads

comp = json.load(open(sys.argv[1]))["rows"]
cf = json.load(open(sys.argv[2]))["rows"] if len(sys.argv) > 2 else []


def spreads(rs, k):
    """(mean, sampling spread, training spread) of metric ``k`` over rows ``rs`` (compare's definitions)."""
    per = {}
    for r in rs:
        per.setdefault(r["training_seed"], []).append(r[k])
    return (statistics.mean(r[k] for r in rs), *seed_spreads(per))


groups = {}
for r in comp:
    groups.setdefault((r["configuration"], r["steps"]), []).append(r)
print(
    "| configuration | steps (per level) | NFE | GFLOPs/sample | training TFLOPs | swd_64 | swd_32 | swd_16 | swd_mean (sampling, training spread) | spectrum_64 / 32 / 16 (dB) | FID-proxy (random) |"
)
print("|---|---|---|---|---|---|---|---|---|---|---|")
for (c, s), rs in groups.items():
    m = lambda k: statistics.mean(r[k] for r in rs)
    mean, samp, train = spreads(rs, "swd_mean")
    print(
        f"| {c} | {s} | {rs[0]['nfe']} | {m('gflops_per_sample'):.2f} | {m('train_flops') / 1e12:.1f} | {m('swd_64'):.1f} | {m('swd_32'):.1f} | {m('swd_16'):.1f} | **{mean:.1f}** ({samp:.1f}, {train:.1f}) | {m('spectrum_64'):.1f} / {m('spectrum_32'):.1f} / {m('spectrum_16'):.1f} | {m('fid_random'):.2f} |"
    )
if cf:
    print()
    print(
        "| pixel_hdit_64 sampled | S | K | C | GFLOPs/sample | swd_64 | swd_32 | swd_16 | swd_mean (sampling, training spread) | spectrum_64 (dB) | FID-proxy (random) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    g2 = {}
    for r in cf:
        g2.setdefault((r["method"], r["steps"], r["start"], r["coarse_steps"]), []).append(r)
    for (meth, S, K, C), rs in sorted(
        g2.items(), key=lambda kv: statistics.mean(r["gflops_per_sample"] for r in kv[1])
    ):
        m = lambda k: statistics.mean(r[k] for r in rs)
        mean, samp, train = spreads(rs, "swd_mean")
        name = "full resolution" if meth == "full" else "coarse first"
        print(
            f"| {name} | {S} | {K or '-'} | {C or '-'} | {m('gflops_per_sample'):.2f} | {m('swd_64'):.1f} | {m('swd_32'):.1f} | {m('swd_16'):.1f} | **{mean:.1f}** ({samp:.1f}, {train:.1f}) | {m('spectrum_64'):.1f} | {m('fid_random'):.2f} |"
        )
