"""``python -m pyramid_dm views``: the W&B workspaces of :mod:`pyramid_dm.views`, listed, checked against a run's
logged keys, and applied (saved to W&B) with ``wandb-workspaces`` (``pip install wandb-workspaces``) when online.

    python -m pyramid_dm views list
    python -m pyramid_dm views check pyramid --run runs/pyramid-digits       # every panel key found in the run?
    python -m pyramid_dm views apply pyramid --entity ME --project pyramid_dm [--run runs/pyramid-digits]

``apply`` writes a workspace (a saved view) into the project; with ``--run`` the panels name exactly the keys that run
logged (``val/fid_*`` becomes ``val/fid_digits_clf``), else a pattern becomes W&B's ``metric_regex``. It refuses,
before touching W&B, any panel key the run did not log.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..eval.history import run_history, run_summary
from ..loggers import has_wandb_credentials, wandb_offline
from ..views import VIEWS, View, matches, missing_keys, regex_of
from .args import Parser


def parse_args(argv: list[str]):
    p = Parser(prog="python -m pyramid_dm views", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the views and their panels")
    for action, text in (("check", "check a view's keys against a run"), ("apply", "save a view to W&B (online)")):
        q = sub.add_parser(action, help=text, formatter_class=p.formatter_class)
        q.add_argument("view", choices=sorted(VIEWS))
        q.add_argument("--run", required=action == "check", help="a run directory (runs/<exp>) or a W&B run folder")
        if action == "apply":
            q.add_argument("--entity", required=True, help="the W&B entity (user or team)")
            q.add_argument("--project", required=True, help="the W&B project the runs are in")
            q.add_argument("--name", help="the workspace's name; None: 'pyramid_dm VIEW'")
    return p.parse_args(argv)


def wandb_run_dir(path: str) -> Path:
    """The newest W&B run folder of a run directory (``runs/<exp>/wandb/offline-run-*`` or ``run-*``), or ``path``."""
    p = Path(path)
    if (p / "files").is_dir() or list(p.glob("*.wandb")):
        return p
    found = sorted(p.glob("wandb/*run-*"), key=lambda f: f.name.split("-", 2)[-1]) or sorted(p.glob("*run-*"))
    found = [f for f in found if f.is_dir()] or sorted(p.rglob("wandb/*run-*"))
    if not found:
        raise UserError(f"--run {path}: no W&B run folder (wandb/offline-run-* or wandb/run-*) in it")
    return found[-1]


def logged_keys(path: str) -> tuple[set[str], set[str]]:
    """(history keys, summary keys) of the run at ``path``; an image is logged as ``key`` (its parts flattened)."""
    run = wandb_run_dir(path)
    try:
        rows, summary = run_history(run), run_summary(run)
    except RuntimeError as exc:
        raise UserError(f"--run {path}: {exc}") from exc
    history = {k.split(".")[0] if "._type" in k or k.endswith(".count") else k for row in rows for k in row}
    best = {f"{k}.{part}" for k, v in summary.items() if isinstance(v, dict) for part in v}  # val/loss.min
    return history, set(summary) | best


def describe(view: View) -> str:
    lines = [f"{view.name}: {view.description}"]
    for section, panels in view.sections.items():
        lines.append(f"  {section}")
        lines += [f"    {p.kind:7} {p.title}: {', '.join(p.keys)} (x: {p.x})" for p in panels]
    return "\n".join(lines)


def workspace(view: View, entity: str, project: str, name: str, keys: tuple[set[str], set[str]] | None):
    """The ``wandb_workspaces`` Workspace of ``view``; with a run's ``keys`` the patterns become the logged keys."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    history, summary = keys or (set(), set())
    patterns = [k for panels in view.sections.values() for p in panels for k in p.summary_keys() if "*" in k]
    if patterns and not keys:
        raise UserError(f"view {view.name!r} plots {patterns} across runs: pass --run with one of the runs")

    def summary_key(pattern: str) -> str:
        found = [k for k in matches(pattern, summary) if "." not in k]
        best = [f"{k}.min" for k in found if f"{k}.min" in summary] + [
            f"{k}.max" for k in found if f"{k}.max" in summary
        ]
        return (best or found or [pattern])[0]

    def panel(p):
        if p.kind == "media":
            return wr.MediaBrowser(
                title=p.title, media_keys=[k for pat in p.keys for k in (matches(pat, history) or [pat])]
            )
        if p.kind == "scatter":
            return wr.ScatterPlot(
                title=p.title, x=wr.SummaryMetric(summary_key(p.x)), y=wr.SummaryMetric(summary_key(p.keys[0]))
            )
        ys, regexes = [], []
        for pattern in p.keys:  # a run's keys name the lines; without a run, a pattern is W&B's metric_regex
            if keys:
                ys += matches(pattern, history)
            elif "*" in pattern:
                regexes.append(regex_of(pattern))
            else:
                ys.append(pattern)
        return wr.LinePlot(title=p.title, x=p.x, y=ys, **({"metric_regex": "|".join(regexes)} if regexes else {}))

    sections = [
        ws.Section(name=s, panels=[panel(p) for p in panels], is_open=True) for s, panels in view.sections.items()
    ]
    runset = ws.RunsetSettings(groupby=[ws.Metric(view.group_by)] if view.group_by else [])
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections, runset_settings=runset)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.action == "list":
        print("\n\n".join(describe(v) for v in VIEWS.values()))
        return 0
    view = VIEWS[args.view]
    keys = logged_keys(args.run) if args.run else None
    if keys:
        missing = missing_keys(view, *keys)
        if missing:
            raise UserError(f"view {view.name!r}: {len(missing)} panel key(s) not logged by {args.run}: {missing}")
        print(f"view {view.name!r}: every panel key is logged by {args.run}")
    if args.action == "check":
        return 0
    if wandb_offline(None) or not has_wandb_credentials():
        raise UserError("views apply saves to W&B: log in first (`wandb login`) and unset WANDB_MODE=offline")
    try:
        built = workspace(view, args.entity, args.project, args.name or f"pyramid_dm {view.name}", keys)
    except ImportError as exc:
        raise UserError(f"views apply needs wandb-workspaces: pip install wandb-workspaces ({exc})") from exc
    saved = built.save()
    print(f"saved W&B workspace {built.name!r}: {getattr(saved, 'url', '')}")
    return 0
