"""The sampling settings of a model, per level: the one home of sampler-name checks, of "one value or one per level",
and of the defaults (the model's ``level_samplers`` / ``level_steps``, else ``sampler`` / ``sample_steps``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..diffusion import DISCRETIZATIONS, SAMPLERS
from ..diffusion.schedules.discretization import check_steps as check_grid_steps
from ..errors import UserError


def check_sampler(name: str, where: str = "sampler") -> str:
    """``name`` if it is a sampler of :data:`~pyramid_dm.diffusion.SAMPLERS`, else a UserError naming ``where``."""
    if name not in SAMPLERS:
        raise UserError(f"{where} {name!r} is not one of {sorted(SAMPLERS)} (unknown sampler {name!r})")
    return name


def check_discretization(name: str | None, where: str = "discretization") -> str | None:
    if name is not None and name not in DISCRETIZATIONS:
        raise UserError(f"{where} {name!r} is not one of {list(DISCRETIZATIONS)}")
    return name


def check_steps(steps: Sequence[int], where: str = "steps") -> list[int]:
    """Each level's step count (:func:`~pyramid_dm.diffusion.schedules.discretization.check_steps`), a UserError naming
    ``where``."""
    try:
        return [check_grid_steps(s) for s in steps]
    except (ValueError, TypeError):
        raise UserError(f"{where} must be >= 1 (whole numbers), got {list(steps)}") from None


def per_level(name: str, value, num_levels: int, default=None) -> list:
    """``value`` (None: ``default``) as one entry per level: a single value (or a one-element list) serves every
    level; a list must have one entry per level, coarse first."""
    if value is None:
        value = default
    if not isinstance(value, list | tuple):
        return [value] * num_levels
    value = list(value)
    if len(value) == 1:
        return value * num_levels
    if len(value) != num_levels:
        plural = "s" if num_levels > 1 else ""
        raise UserError(
            f"{name} {value} gives {len(value)} values but the model has {num_levels} level{plural} (it is a "
            f"{num_levels}-level model): give one value, or one per level, coarse first"
        )
    return value


@dataclass(frozen=True)
class SamplingPlan:
    """The model's own sampler and step budget per level, and its grid (None: each sampler's default)."""

    samplers: tuple[str, ...]
    steps: tuple[int, ...]
    discretization: str | None = None

    @classmethod
    def build(
        cls,
        num_levels: int,
        sampler,
        steps,
        discretization: str | None,
        names: tuple[str, str] = ("model.sampler", "model.sample_steps"),
    ) -> SamplingPlan:
        """From one sampler/step count (or one per level, coarse first), ``names`` naming them in errors."""
        samplers = [check_sampler(s, names[0]) for s in per_level(names[0], sampler, num_levels)]
        steps = check_steps(per_level(names[1], steps, num_levels), names[1])
        return cls(tuple(samplers), tuple(steps), check_discretization(discretization, "model.discretization"))

    def resolve(self, sampler=None, steps=None, names: tuple[str, str] = ("sampler", "steps")) -> tuple[list, list]:
        """(samplers, steps) per level for a call: what is given (one, or one per level), else the plan's."""
        n = len(self.samplers)
        samplers = [check_sampler(s, names[0]) for s in per_level(names[0], sampler, n, list(self.samplers))]
        return samplers, check_steps(per_level(names[1], steps, n, list(self.steps)), names[1])

    def grid(self, sampler: str, discretization: str | None = None) -> str:
        """The discretization a call uses: the one given, the model's, else the sampler's own default."""
        return discretization or self.discretization or SAMPLERS[sampler].grid

    def describe(self, samplers: Sequence[str] | None = None, steps: Sequence[int] | None = None) -> str:
        """'dpmpp_2m 20 steps' for one level, 'dpmpp_2m/dpmpp_2m 20/8 steps' for a pyramid."""
        samplers, steps = list(samplers or self.samplers), list(steps or self.steps)
        if len(set(samplers)) == 1:
            samplers = samplers[:1]
        return f"{'/'.join(samplers)} {'/'.join(map(str, steps))} steps"
