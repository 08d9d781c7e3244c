"""The three front doors: pixel, latent and pyramid diffusion differ only in the first stage and the level layout.

Each family is a recipe of typed options: :class:`DiffusionOptions` (every family) plus the family's own
(:class:`LatentOptions`, :class:`PyramidOptions`). The options have no defaults here: the defaults are written once,
in the LightningModule constructors users configure (:mod:`pyramid_dm.models`), and a checkpoint stores them all, so
:func:`build_engine` (and :func:`~pyramid_dm.engine.load_engine`) reads every option from a complete mapping and a
missing or misspelt key is an error naming it. A new family is a new recipe in :data:`RECIPES`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..diffusion import (
    LAYOUTS,
    DiffusionLoss,
    LevelGeometry,
    NativeLayout,
    build_schedule,
    resolution_shift,
)
from ..diffusion.parameterization import check_pair, check_prediction
from ..diffusion.pyramid.layouts import Layout
from ..errors import UserError
from ..nets import NETWORKS, NetSpec
from ..stages import FirstStage, IdentityStage, autoencoder_stage
from .engine import DiffusionEngine
from .first_stages import PYRAMID_FIRST_STAGES
from .objectives import OBJECTIVES, Objective, Sandwich
from .plan import SamplingPlan, per_level
from .supernet import SandwichRule


def options_from(cls, h: Mapping[str, Any], where: str = "model"):
    """``cls`` (an options dataclass) from the matching keys of ``h``; a missing key is named."""
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in h]
    if missing:
        raise UserError(f"{where}: {cls.__name__} needs {missing}, which the hyperparameters do not hold")
    return cls(**{n: h[n] for n in names})


@dataclass(frozen=True)
class DiffusionOptions:
    """Every family's options; their meaning and defaults: :class:`pyramid_dm.models.DiffusionModel`."""

    image_size: int
    channels: int
    num_classes: int
    class_conditional: bool
    label_dropout: float
    network: str
    unet: dict | None
    schedule: str
    num_timesteps: int
    zero_terminal_snr: bool
    schedule_options: dict | None
    shift_reference_resolution: int | None
    prediction: str
    sigma_data: float
    training_noise: str
    lognormal_mean: float
    lognormal_std: float
    logit_normal_mean: float
    logit_normal_std: float
    mode_scale: float
    loss_weighting: str
    min_snr_gamma: float
    sampler: str | None
    sample_steps: int | None
    discretization: str | None
    step_aware: dict | None
    objective: str | None
    objective_options: dict | None

    def __post_init__(self):
        if not 0 <= self.label_dropout < 1:
            raise UserError(f"model.label_dropout must lie in [0, 1), got {self.label_dropout}")
        try:
            object.__setattr__(self, "supernet", SandwichRule.from_options(self.step_aware))
        except ValueError as e:
            raise UserError(f"model.{e}") from None
        try:
            check_prediction(self.prediction)
            NETWORKS.lookup(self.network)
            OBJECTIVES.lookup(self.objective_name)
        except ValueError as e:
            raise UserError(f"model: {e}") from None

    @property
    def objective_name(self) -> str:
        """``objective``, else the sandwich rule for a step-aware supernet and the denoising loss otherwise."""
        return self.objective or ("sandwich" if self.supernet else "denoising")

    @property
    def classes(self) -> int:
        return self.num_classes if self.class_conditional else 0

    def net_factory(self, spec: NetSpec) -> Callable[[], nn.Module]:
        """The registered network ``network`` built for ``spec`` from its options (``unet``), plus its widths when it
        is a step-aware supernet and the inputs its objective adds (:attr:`Objective.network_options`)."""
        widths = {"width_multipliers": list(self.supernet.widths)} if self.supernet else {}
        extra = OBJECTIVES[self.objective_name].network_options
        build, options = NETWORKS[self.network], {**(self.unet or {}), **widths, **extra}

        def make() -> nn.Module:
            try:
                return build(spec, **options)
            except (TypeError, ValueError) as e:  # an option the network does not take, or a value it refuses
                raise UserError(f"model.unet (the options of network {self.network!r}): {e}") from None

        return make


@dataclass(frozen=True)
class LatentOptions:
    autoencoder_ckpt: str
    scale_latents: bool


@dataclass(frozen=True)
class PyramidOptions:
    """The pyramid's options; meaning and defaults: :class:`pyramid_dm.models.PyramidDiffusion`."""

    first_stage: str
    resolutions: list[int] | None
    autoencoder_ckpt: str | None
    scale_latents: bool
    layout: str
    level_samplers: list[str] | None
    level_steps: list[int] | None
    level_training: str
    level_weights: list[float] | None
    conditioning_augmentation: float
    sample_augmentation: float
    frido_noise_mix: float
    stage_bounds: list[float] | None
    shared_body: bool
    spade: bool

    def __post_init__(self):
        for key, value, choices in [
            ("first_stage", self.first_stage, PYRAMID_FIRST_STAGES),
            ("layout", self.layout, tuple(LAYOUTS)),
        ]:
            if value not in choices:
                raise UserError(f"model.{key} {value!r} is not one of {list(choices)}")
        for key in ("conditioning_augmentation", "sample_augmentation", "frido_noise_mix"):
            if not 0 <= getattr(self, key) < 1:
                raise UserError(f"model.{key} must lie in [0, 1), got {getattr(self, key)}")
        if self.stage_bounds is not None and "stage_bounds" not in LAYOUTS[self.layout].options:
            users = [name for name, cls in LAYOUTS.items() if "stage_bounds" in cls.options]
            raise UserError(
                f"model.stage_bounds {self.stage_bounds} apply to layout {' or '.join(users)}, not {self.layout!r}"
            )


class Recipe:
    """What a family decides: its first stage, layout, network, latent scale and per-level settings."""

    family = "diffusion"

    def __init__(self, h: Mapping[str, Any]):
        self.o = options_from(DiffusionOptions, h)

    def first_stage(self, recorded: dict | None = None) -> FirstStage:
        """``recorded``: what a checkpoint saved of the stage (:meth:`FirstStage.record`), to rebuild it from that."""
        return IdentityStage(self.o.channels, self.o.image_size)

    def layout(self) -> Layout:
        return NativeLayout()

    def net_spec(self, geometry: LevelGeometry) -> NetSpec:
        (c, size, _), classes = geometry.grid_shape(0), self.o.classes or None
        return NetSpec((c,), (size,), (0,), classes)

    def latent_scale(self) -> float:
        """1 for pixel levels; NaN (= fit on the first training batch) for latent ones."""
        return 1.0

    def plan(self, num_levels: int, objective: Objective) -> SamplingPlan:
        """The default sampling plan: ``sampler`` / ``sample_steps``, else the objective's (:attr:`default_plan`)."""
        o, (sampler, steps) = self.o, objective.default_plan
        names = ("model.sampler", "model.sample_steps")
        return SamplingPlan.build(num_levels, o.sampler or sampler, o.sample_steps or steps, o.discretization, names)

    def level_weights(self, num_levels: int) -> list[float] | None:
        return None

    def level_training(self) -> str:
        return "all"


class PixelRecipe(Recipe):
    """Diffusion directly on pixels (DDPM, Ho et al. 2020): the first stage is the identity."""

    family = "pixel"


class LatentRecipe(Recipe):
    """Diffusion in a frozen autoencoder's latent space (LDM, Rombach et al. 2022)."""

    family = "latent"

    def __init__(self, h: Mapping[str, Any]):
        super().__init__(h)
        self.latent = options_from(LatentOptions, h)

    def first_stage(self, recorded: dict | None = None) -> FirstStage:
        return autoencoder_stage(self.latent.autoencoder_ckpt, self.o.channels, self.o.image_size, "single", recorded)

    def latent_scale(self) -> float:
        return math.nan if self.latent.scale_latents else 1.0


class PyramidRecipe(Recipe):
    """Coarse-to-fine diffusion over L >= 2 levels of an image pyramid or a multi-scale autoencoder."""

    family = "pyramid"

    def __init__(self, h: Mapping[str, Any]):
        super().__init__(h)
        self.p = options_from(PyramidOptions, h)

    def first_stage(self, recorded: dict | None = None) -> FirstStage:
        return PYRAMID_FIRST_STAGES[self.p.first_stage].build(self.o, self.p, recorded)

    def layout(self) -> Layout:
        return LAYOUTS[self.p.layout].from_options(self.p)

    def net_spec(self, geometry: LevelGeometry) -> NetSpec:
        return NetSpec(
            tuple(c for c, _, _ in geometry.level_shapes),
            tuple(geometry.grid_sizes),
            tuple(geometry.context_channels(level) for level in range(geometry.num_levels)),
            self.o.classes or None,
            pyramid=True,
            shared_body=self.p.shared_body,
            spade=self.p.spade,
        )

    def latent_scale(self) -> float:
        return math.nan if PYRAMID_FIRST_STAGES[self.p.first_stage].latent and self.p.scale_latents else 1.0

    def plan(self, num_levels: int, objective: Objective) -> SamplingPlan:
        o, p, (sampler, steps) = self.o, self.p, objective.default_plan
        names = ("model.level_samplers", "model.level_steps")
        samplers, steps = p.level_samplers or o.sampler or sampler, p.level_steps or o.sample_steps or steps
        return SamplingPlan.build(num_levels, samplers, steps, o.discretization, names)

    def level_weights(self, num_levels: int) -> list[float] | None:
        if self.p.level_weights is None:
            return None
        return per_level("model.level_weights", list(self.p.level_weights), num_levels)

    def level_training(self) -> str:
        return self.p.level_training


RECIPES: dict[str, type[Recipe]] = {"pixel": PixelRecipe, "latent": LatentRecipe, "pyramid": PyramidRecipe}


def build_objective(o: DiffusionOptions) -> Objective:
    """The objective of options ``o``; a step-aware supernet trains any objective by the sandwich rule."""
    objective = OBJECTIVES[o.objective_name].from_options(o)
    if o.supernet and not isinstance(objective, Sandwich):
        objective = Sandwich(o.supernet, objective)
    return objective


def build_engine(family: str, h: Mapping[str, Any], first_stage: dict | None = None) -> DiffusionEngine:
    """The engine of ``family`` from its complete options ``h`` (a LightningModule's or a checkpoint's hparams);
    ``first_stage``: what a checkpoint recorded of its first stage, so that it is rebuilt without reading files."""
    recipe = RECIPES[family](h)
    o = recipe.o
    first_stage = recipe.first_stage(first_stage)
    layout = recipe.layout()
    try:
        geometry = layout.geometry(first_stage.level_shapes)
    except ValueError as e:
        raise UserError(f"model (layout {layout.name}): {e}") from None
    try:
        schedules = []
        for level in range(geometry.num_levels):
            ref = o.shift_reference_resolution
            shift = resolution_shift(geometry.grid_sizes[level], ref) if ref else 0.0
            schedules.append(
                build_schedule(
                    o.schedule,
                    o.num_timesteps,
                    zero_terminal_snr=o.zero_terminal_snr,
                    log_snr_shift=shift,
                    options=o.schedule_options,
                    resolution=geometry.grid_sizes[level],
                )
            )
        check_pair(o.prediction, schedules[0])
        layout.check(o.prediction, schedules[0])
    except ValueError as e:
        raise UserError(f"model: {e}") from None
    try:
        settings = dataclasses.asdict(o)  # each distribution and weighting reads its own settings by name
        loss = DiffusionLoss.build(
            o.training_noise, o.loss_weighting, settings, recipe.level_weights(geometry.num_levels)
        )
    except ValueError as e:
        raise UserError(f"model.{e}") from None
    try:
        objective = build_objective(o)
        plan = recipe.plan(geometry.num_levels, objective)
        objective.check_sampling(list(plan.samplers), [])
    except ValueError as e:
        raise UserError(f"model: {e}") from None
    try:
        factory = o.net_factory(recipe.net_spec(geometry))
        engine = DiffusionEngine(
            first_stage,
            layout,
            factory,
            schedules,
            loss,
            plan,
            prediction=o.prediction,
            sigma_data=o.sigma_data,
            num_classes=o.classes,
            label_dropout=o.label_dropout,
            latent_scale=recipe.latent_scale(),
            level_training=recipe.level_training(),
            family=recipe.family,
            objective=objective,
        )
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"model.unet: {e}") from None
    return engine
