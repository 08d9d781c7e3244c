"""``python -m pyramid_dm export``: a diffusion checkpoint as a folder with no pickle in it, to share or archive.

    python -m pyramid_dm export --ckpt_path runs/quickstart/checkpoints/last.ckpt --out exports/quickstart
    python -m pyramid_dm sample --ckpt_path exports/quickstart          # every command reads the folder
    python -c "from pyramid_dm.engine import load_engine; print(load_engine('exports/quickstart').sample(4).shape)"

The folder is in diffusers' layout and holds no pickle (:func:`pyramid_dm.checkpoints.write_export`,
:mod:`pyramid_dm.engine.diffusers_layout`): ``unet/`` (the EMA network and the latent scale as safetensors, and its
config), ``vae/`` (the first stage's weights, when it has any: a latent model's autoencoder), ``scheduler/`` (one of
diffusers' own schedulers, mapped exactly where a mapping exists), ``model_index.json`` and ``pipeline.py`` (for
``diffusers.DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)``, or load
:class:`pyramid_dm.pipelines.PyramidDMPipeline` yourself), ``pyramid_dm.json`` (hyperparameters, stamp, step, training
cost, data), ``config.yaml`` (the run's, when it sits beside the checkpoints) and ``README.md``, a model card: the
family, data, steps, training FLOPs, parameters, the default sampler, the diffusers schedulers that sample it exactly
and, with ``--results``, the rows of an ``evaluate`` run. The optimizer state, the raw (non-EMA) weights and the loop
state are left out: an export samples and evaluates; it does not resume training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..checkpoints import DIFFUSION_FAMILIES, is_export, jsonable, read_checkpoint, write_export
from ..engine.diffusers_layout import exact_schedulers, unmapped_reason, write_diffusers_layout
from ..engine.load import engine_from_checkpoint
from ..errors import UserError
from .args import Parser


def parse_args(argv: list[str]):
    p = Parser(prog="python -m pyramid_dm export", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_path", required=True, help="a pixel, latent or pyramid diffusion checkpoint")
    p.add_argument("--out", required=True, help="the export folder to write")
    p.add_argument(
        "--results",
        help="an evaluate run's results.json whose rows the model card lists (default: the newest evaluation of this "
        "checkpoint's step in the run's eval/ folder)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    return p.parse_args(argv)


def model_card(ckpt: dict, engine, name: str, rows: list[dict], config: str | None = None) -> str:
    """The export's README.md: what the model is, its data, training and cost, the evaluation rows and, when the run's
    ``config.yaml`` is at hand, the training config itself."""
    h, data = ckpt["hyper_parameters"], ckpt.get("datamodule_hyper_parameters") or {}
    cost = ckpt.get("training_cost") or {}
    flops = f"{cost['flops']:.3g}" if cost.get("flops") else "not recorded"
    lines = [
        f"# {name}",
        "",
        f"A {engine.family} diffusion model trained with pyramid_dm ({h.get('_class_path', '')}).",
        "",
        "| | |",
        "|---|---|",
        f"| data | {data.get('shards', 'unknown')} ({engine.image_shape[0]}x{engine.image_shape[1]}x{engine.image_shape[2]}) |",  # noqa: E501
        f"| levels | {engine.level_shapes} |",
        f"| network | {h.get('network')} {json.dumps(h.get('unet'))} |",
        f"| parameterization | {h.get('prediction')}, schedule {h.get('schedule')}, "
        f"objective {engine.objective.name} |",
        f"| training | {ckpt.get('global_step')} steps, {flops} training FLOPs |",
        f"| parameters | {engine.num_params():,} (network and first stage) |",
        f"| default sampling | {engine.plan.describe()} |",
        "",
        "Sample it: `python -m pyramid_dm sample --ckpt_path THIS_FOLDER` (or `pyramid_dm.engine.load_engine`), or in",
        "diffusers: `DiffusionPipeline.from_pretrained(THIS_FOLDER, trust_remote_code=True)` (with pyramid_dm",
        "installed; its `pipeline.py` imports `pyramid_dm.pipelines.PyramidDMPipeline`).",
        "",
        diffusers_line(engine),
    ]
    if rows:
        keys = [k for k in ("sampler", "steps", "nfe", "gflops_per_sample") if k in rows[0]]
        keys += [k for k in rows[0] if k.startswith(("fid_", "kid_", "swd_mean"))]
        lines += ["", "## Evaluation", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for row in rows:
            cells = [f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
    if config:
        lines += ["", "## Training config", "", "The run's `config.yaml` (also in this folder):", "", "```yaml"]
        lines += [config.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


def latest_results(run: Path, step) -> Path | None:
    """The newest ``evaluate`` results of this checkpoint's step in the run's ``eval/`` folder, or None."""
    found = []
    for path in run.glob("eval/*/results.json"):
        try:
            if json.loads(path.read_text())["meta"].get("global_step") == step:
                found.append(path)
        except (OSError, ValueError, KeyError):
            continue  # an unreadable evaluation is not the card's
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


def diffusers_line(engine) -> str:
    why = unmapped_reason(engine)
    if why:
        own = engine.plan.describe()
        return f"No diffusers scheduler samples it exactly ({why}): the pipeline samples it with pyramid_dm's ({own})."
    exact = ", ".join(exact_schedulers(engine))
    return f"diffusers schedulers that sample it exactly from the exported config: {exact}."


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not is_export(out):
            raise UserError(f"--out {out} exists and is not an export folder: choose a new or empty --out")
        if not args.overwrite:
            raise UserError(f"--out {out} holds an export; pass --overwrite to replace it, or choose another --out")
    ckpt = read_checkpoint(args.ckpt_path, "--ckpt_path", DIFFUSION_FAMILIES, "a diffusion model")
    engine = engine_from_checkpoint(ckpt, args.ckpt_path)  # the weights fit the model they describe
    ckpt_path = Path(args.ckpt_path).resolve()
    run = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    results = args.results or latest_results(run, ckpt.get("global_step"))
    rows = []
    if results:
        try:
            rows = json.loads(Path(results).read_text())["rows"]
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"--results {results} is not an evaluate results.json ({exc})") from exc
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    config = run / "config.yaml"
    card = model_card(ckpt, engine, out.name, rows, config.read_text() if config.is_file() else None)
    files = write_export(ckpt, out, card)
    files += write_diffusers_layout(ckpt, engine, out, jsonable)
    if config.is_file():
        shutil.copy(config, out / "config.yaml")
        files.append(out / "config.yaml")
    names = ", ".join(str(f.relative_to(out)) for f in files)
    print(f"exported {args.ckpt_path} (step {ckpt.get('global_step')}) -> {out}: {names}")
    if results:
        print(f"model card: the evaluation rows of {results}")
    return 0
