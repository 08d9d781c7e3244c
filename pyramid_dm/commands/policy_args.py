"""``--step_policy`` for ``sample`` and ``evaluate``: a width policy file (or one uniform width) for a step-aware
supernet checkpoint, checked against the model before anything is drawn or written."""

from __future__ import annotations

import argparse

from ..checkpoints import file_sha256
from ..diffusion.step_policy import StepPolicy, resolve_policy
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
    if not policy.name:
        policy.name = str(args.step_policy)
    return policy
