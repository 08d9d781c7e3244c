"""Sampling as an ordered list of denoiser wrappers: each capability that changes how a level's denoiser runs
(classifier-free guidance, classifier guidance, a step-width policy, counting; caching later) is a part that wraps
D(x; sigma) and declares where it goes (``position``: lower runs nearer the network).
:meth:`~.engine.DiffusionEngine.sample` sorts the list by position (stable), so the order a caller writes it in does
not matter, and wraps each level's denoiser inside out. What a wrapper measures it records on itself (reset by
``begin`` at each ``sample`` call), and cost accounting reads those records, whatever the order given.

Positions (a wrapper of your own picks a number between them):

====================  =====  ===========================================================================
part                  pos.   why there
====================  =====  ===========================================================================
:class:`Replace`          0  a denoiser of your own in the network's place (single level)
:class:`Widths`          10  chooses the network (the width of a supernet, or another model) per call
:class:`Count`           20  counts what the networks evaluate (rows / samples), below anything that
                             batches (guidance's 2B) or skips calls (a cache, position 25)
:class:`Guidance`        30  classifier-free guidance: two branches per step
ClassifierGuide          40  classifier guidance on the guided output
                             (:class:`~pyramid_dm.engine.classifier.ClassifierGuide`)
====================  =====  ===========================================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..diffusion import ClassifierFreeGuidance, CountingDenoiser, DenoiserFn
from ..errors import UserError
from .step_policy import PolicyDenoiser, StepPolicy

DiffusionEngine = Any  # a .engine.DiffusionEngine: the engine imports this module, so it is not imported back


@dataclass
class LevelCall:
    """What a wrapper sees of one level of one :meth:`~.engine.DiffusionEngine.sample` call."""

    engine: DiffusionEngine
    level: int
    num_samples: int
    labels: Tensor | None
    cond: dict = field(default_factory=dict)  # the level's conditioning without the labels (a pyramid's context)


class SamplingWrapper:
    """A part wrapped around each level's denoiser during sampling (see the module docstring)."""

    position: ClassVar[float] = 50.0

    def begin(self, engine: DiffusionEngine, num_samples: int, labels: Tensor | None) -> None:
        """A new ``sample`` call: refuse what cannot work (a UserError naming the option), reset the records."""

    def wrap(self, denoiser: DenoiserFn, at: LevelCall) -> DenoiserFn:
        raise NotImplementedError

    def describe(self) -> dict:
        """What a result row records of this wrapper (e.g. ``{"guidance": 3.0}``)."""
        return {}

    def extra_flops(self) -> float:
        """FLOPs per sample it spent outside the network calls of the last ``sample`` call (a classifier's)."""
        return 0.0


def ordered(wrappers: Sequence[SamplingWrapper]) -> list[SamplingWrapper]:
    """The wrappers innermost first (by ``position``, stable)."""
    for w in wrappers:
        if not isinstance(getattr(w, "position", None), int | float) or not callable(getattr(w, "wrap", None)):
            raise TypeError(f"{w!r} is not a sampling wrapper (needs a numeric position and wrap(denoiser, at))")
    return sorted(wrappers, key=lambda w: w.position)


def find(wrappers: Sequence[SamplingWrapper], kind: type) -> SamplingWrapper | None:
    """The first wrapper of ``kind`` among ``wrappers``, or None."""
    return next((w for w in wrappers if isinstance(w, kind)), None)


class Replace(SamplingWrapper):
    """Your own denoiser in place of the network's (a single-level model: an analytic denoiser, a test double)."""

    position = 0.0

    def __init__(self, denoiser: DenoiserFn):
        self.denoiser = denoiser

    def begin(self, engine, num_samples, labels) -> None:
        if engine.num_levels > 1:
            raise UserError("Replace(denoiser) replaces a single level's denoiser; this model has several levels")

    def wrap(self, denoiser, at):
        return self.denoiser


class Widths(SamplingWrapper):
    """Each call at its step policy's width (:mod:`~.step_policy`). Records ``calls``: per level, the network's
    sample-calls per width (a batch of B is B) of the last ``sample`` call."""

    position = 10.0

    def __init__(self, policy: StepPolicy):
        self.policy = policy
        self.runs: dict[int, PolicyDenoiser] = {}  # filled by each ``sample`` call

    def begin(self, engine, num_samples, labels) -> None:
        self.runs = {}
        self.num_samples = num_samples

    def wrap(self, denoiser, at):
        self.runs[at.level] = self.policy.wrap(denoiser, at.level)
        return self.runs[at.level]

    @property
    def calls(self) -> list[Counter]:
        return [self.runs[level].calls for level in sorted(self.runs)]

    def describe(self) -> dict:
        return {"step_policy": self.policy.name or "policy"}


class Count(SamplingWrapper):
    """Network evaluations per sample at each level (NFE) of the last ``sample`` call: rows evaluated / samples, so a
    guided step counts 2 whether its branches run as one batch of 2B or as two calls of B."""

    position = 20.0

    def begin(self, engine, num_samples, labels) -> None:
        self.counters: dict[int, CountingDenoiser] = {}
        self.num_samples = num_samples

    def wrap(self, denoiser, at):
        self.counters[at.level] = CountingDenoiser(denoiser)
        return self.counters[at.level]

    @property
    def nfe(self) -> list[float]:
        out = [self.counters[lv].rows / self.num_samples for lv in sorted(self.counters)]
        return [int(n) if float(n).is_integer() else n for n in out]


class Guidance(SamplingWrapper):
    """Classifier-free guidance of ``scale`` toward the labels (:class:`~pyramid_dm.diffusion.ClassifierFreeGuidance`;
    1 is the conditional model: no wrapping). ``interval`` guides only for sigma in (lo, hi]; ``rescale`` phi;
    ``batched`` runs both branches as one batch of 2B (default: batched without an interval)."""

    position = 30.0

    def __init__(
        self,
        scale: float,
        interval: tuple[float, float] | None = None,
        rescale: float = 0.0,
        batched: bool | None = None,
    ):
        self.scale, self.rescale = float(scale), float(rescale)
        self.interval = None if interval is None else tuple(float(v) for v in interval)
        self.batched = self.interval is None if batched is None else bool(batched)

    def begin(self, engine, num_samples, labels) -> None:
        if self.scale == 1.0:
            return
        if not engine.num_classes:
            raise UserError(f"guidance {self.scale} needs a class-conditional model; this one has no classes")
        if not engine.label_dropout:
            raise UserError(
                f"guidance {self.scale}: the model was trained with label_dropout=0, so its unconditional "
                "(null-class) branch was never trained; retrain with model.label_dropout > 0 (0.1 is typical)"
            )
        if labels is None:
            raise UserError(f"guidance {self.scale} needs class labels to guide toward")

    def wrap(self, denoiser, at):
        if self.scale == 1.0:
            return denoiser
        null = {**at.cond, **at.engine.conditioning(torch.full_like(at.labels, -1))}
        options = {"rescale": self.rescale, "batched": self.batched}
        if self.interval is not None:
            options["interval"] = self.interval
        try:
            return ClassifierFreeGuidance(denoiser, self.scale, null, **options)
        except ValueError as e:
            raise UserError(str(e)) from None

    def describe(self) -> dict:
        return {"guidance": self.scale}
