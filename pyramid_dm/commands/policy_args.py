"""``--step_policy`` for ``sample`` and ``evaluate``: a width policy file (or one uniform width) for a step-aware
supernet checkpoint, checked against the model before anything is drawn or written."""

from __future__ import annotations

import argparse

from ..checkpoints import file_sha256, read_checkpoint
from ..engine.load import build_model
from ..engine.step_policy import StepPolicy, resolve_policy
from ..errors import UserError


def add_policy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--step_policy",
        help="a width policy JSON (search-steps writes them) or one width for every call, e.g. 0.5; needs a "
        "checkpoint trained with model.init_args.step_aware",
    )
    p.add_argument(
        "--ignore_policy_hash", action="store_true", help="use a policy searched for another checkpoint's weights"
    )


def load_policy(args, model, samplers: list | None = None, steps: list | None = None) -> StepPolicy | None:
    """The ``--step_policy`` of ``args`` checked against ``model`` (widths, levels, checkpoint hash) and, for a
    per_step policy, the sampler budget; None without one."""
    if getattr(args, "step_policy", None) is None:
        return None
    try:
        policy = resolve_policy(args.step_policy, model.num_levels)
        sha = file_sha256(args.ckpt_path) if policy.model.get("checkpoint_sha256") else None
        where = f"--step_policy {args.step_policy}"
        policy.check_model(model.widths, model.level_shapes, sha, where, args.ignore_policy_hash)
        if samplers is not None:
            level_samplers = [s for s in samplers] if isinstance(samplers, list) else [samplers]
            policy.check_budget(level_samplers, list(steps), where)
    except ValueError as e:
        raise UserError(str(e)) from None
    for name, path in policy.models.items():  # T-Stitch: other models that run some of the calls
        policy.engines[name] = load_other(args, model, name, path)
    if not policy.name:
        policy.name = str(args.step_policy)
    return policy


SHARED = ("image_size", "channels", "num_classes", "class_conditional", "schedule", "num_timesteps")
SHARED += ("zero_terminal_snr", "schedule_options", "shift_reference_resolution")


def load_other(args, model, name: str, path: str):
    """Another model a policy names (its EMA weights, on the model's device): it must share the data and the noise
    schedule with the ``--ckpt_path`` model, or its calls would denoise another process."""
    where = f"--step_policy {args.step_policy}: model {name!r} ({path})"
    mine = read_checkpoint(args.ckpt_path, "--ckpt_path")
    other = read_checkpoint(path, where)
    differ = [k for k in SHARED if mine["hyper_parameters"].get(k) != other["hyper_parameters"].get(k)]
    data = lambda c: (c.get("datamodule_hyper_parameters") or {}).get("shards")  # noqa: E731
    if data(mine) != data(other):
        differ.append(f"data shards ({data(mine)} vs {data(other)})")
    if mine["pyramid_dm"].get("level_shapes") != other["pyramid_dm"].get("level_shapes"):
        differ.append("level_shapes")
    if differ:
        raise UserError(f"{where} does not share data and schedule with {args.ckpt_path}: {differ} differ")
    return build_model(other, path, None, model.device, command="sample")
