"""The diffusion engine, Lightning-free: parts composed into one ``nn.Module`` (:class:`DiffusionEngine`), the three
family recipes that build it (:mod:`.families`), its sampling plan and :func:`load_engine`.

:class:`GenerativeModel` is what evaluation and callbacks need from a model: an engine (or an engine bound to its EMA
network, :class:`BoundEngine`) satisfies it.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from .classifier import ClassifierGuide
from .engine import LEVEL_TRAINING, BoundEngine, DiffusionEngine
from .families import RECIPES, DiffusionOptions, LatentOptions, PyramidOptions, build_engine
from .few_step import ConsistencyTuning, MeanFlow
from .load import ema_net_from_checkpoint, engine_from_checkpoint, load_engine
from .plan import SamplingPlan, check_discretization, check_sampler, check_steps, per_level


class GenerativeModel(Protocol):
    """What ``eval`` and ``callbacks`` use of a model: sampling, its plan, labels, geometry and cost."""

    family: str
    num_classes: int
    num_levels: int
    level_shapes: list[tuple[int, int, int]]
    image_shape: tuple[int, int, int]
    device: torch.device
    plan: SamplingPlan

    def sample(self, num_samples: int, sampler=None, steps=None, **kwargs) -> Tensor: ...

    def sample_labels(self, start: int, count: int) -> Tensor | None: ...

    def decode(self, levels: list[Tensor]) -> Tensor: ...

    def grid_size(self, level: int) -> int: ...

    def flops_per_call(self, width: float = 1.0) -> list[float]: ...

    def decoder_flops(self) -> float: ...

    def num_params(self) -> int: ...


__all__ = [
    "ClassifierGuide",
    "ConsistencyTuning",
    "MeanFlow",
    "LEVEL_TRAINING",
    "RECIPES",
    "BoundEngine",
    "DiffusionEngine",
    "DiffusionOptions",
    "GenerativeModel",
    "LatentOptions",
    "PyramidOptions",
    "SamplingPlan",
    "build_engine",
    "check_discretization",
    "check_sampler",
    "check_steps",
    "ema_net_from_checkpoint",
    "engine_from_checkpoint",
    "load_engine",
    "per_level",
]
