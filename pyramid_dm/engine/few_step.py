"""Few-step objectives: consistency tuning (ECT) and MeanFlow, each one registered part (:mod:`.objectives`).

Their math is in :mod:`pyramid_dm.diffusion.training.consistency` and :mod:`pyramid_dm.diffusion.training.meanflow`;
here they become objectives: a per-level loss that the engine runs for every level of any layout (so a pyramid's levels
and Pyramidal Flow's stages each get their own 1-2 calls), the denoiser the samplers call, the samplers that fit
(``consistency``, ``meanflow``), their training FLOPs, and their settings (``model.objective_options``):

- ``ect``: ``p_mean``, ``p_std`` (-1.1, 2.0), ``q``, ``k``, ``b`` (2, 8, 1), ``double_every`` (steps per halving of
  the gap, 1000), ``huber_c`` (0: ECT's L2 norm), ``sigma_min`` (the boundary; default the schedule's smallest
  level). Usually tuned from a trained checkpoint: ``model.init_args.init_from: CKPT``. Dropout (the network's
  ``unet.dropout``) uses one mask for both passes, as ECT does.
- ``meanflow``: ``mean``, ``std`` (-0.4, 1.0: (r, t) logit-normal), ``ratio`` (0.25 with r != t), ``p``, ``c``
  (1, 1e-3: adaptive weighting), ``guidance_scale`` (1: none; w > 1 folds classifier-free guidance into training),
  ``guidance_interval`` ([0, 1]: the t where it does). Needs ``prediction: flow`` and ``schedule: flow``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..diffusion.parameterization import PREDICTIONS, expand
from ..diffusion.training.consistency import ConsistencyFunction, GapSchedule, ect_loss, lognormal_sigma
from ..diffusion.training.meanflow import (
    AverageVelocity,
    TimeSampler,
    adaptive_loss,
    check_flow,
    meanflow_target,
    velocity,
)
from .objectives import OBJECTIVES, Objective, StepLosses

NO_GUIDANCE = (
    "a {kind} model cannot be guided while sampling (the few-step map of the guided ODE is not a mix of the two "
    "branches' maps){hint}"
)


def settings_from(cls, o, objective: str):
    """``cls`` (a settings dataclass) from ``o.objective_options``; an unknown key or a refused value is named."""
    given = dict(o.objective_options or {})
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"objective_options {unknown} are not settings of objective {objective!r} ({known})")
    return cls(**given)


def rng_state(device: torch.device):
    """The RNG state that draws dropout masks on ``device`` (CPU, or the CUDA device's)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_rng_state(device: torch.device, state) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@dataclass(frozen=True)
class ECTSettings:
    p_mean: float = -1.1
    p_std: float = 2.0
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    double_every: int = 1000
    huber_c: float = 0.0
    sigma_min: float | None = None

    def __post_init__(self):
        if self.huber_c < 0 or self.p_std <= 0:
            raise ValueError(f"objective_options: huber_c must be >= 0 and p_std > 0, got {self.huber_c}, {self.p_std}")


class ConsistencyTuning(Objective):
    """Easy Consistency Tuning (Geng et al., ICLR 2025; :mod:`pyramid_dm.diffusion.training.consistency`)."""

    name = "ect"
    model_kind = "consistency"
    default_plan = ("consistency", 2)
    guidance_refusal = NO_GUIDANCE.format(kind="consistency", hint="; sample it unguided")

    def __init__(self, settings: ECTSettings):
        self.settings = settings
        s = settings
        self.gaps = GapSchedule(s.q, s.k, s.b, s.double_every)
        self.stage = 0

    @classmethod
    def from_options(cls, o) -> ConsistencyTuning:
        return cls(settings_from(ECTSettings, o, cls.name))

    def wrap_denoiser(self, denoiser):
        return ConsistencyFunction(denoiser, self.settings.sigma_min)

    def begin_step(self, step: int) -> None:
        self.stage = self.gaps.stage(step)

    def check_run(self, max_steps: int | None) -> None:
        self.gaps.check(max_steps)

    def times(self, f: ConsistencyFunction, u: Tensor) -> tuple[Tensor, Tensor]:
        """(t, r) per sample (float64) from u ~ U[0, 1): t lognormal inside the schedule's range, r by the gap."""
        s = self.settings
        hi = f.schedule.sigma_range()[1]
        t = lognormal_sigma(u, s.p_mean, s.p_std).clamp(f.sigma_min, hi)
        return t, self.gaps.r(t, self.stage)

    def level_loss(self, engine):
        def loss(f: ConsistencyFunction, x0: Tensor, noise: Tensor, u: Tensor, teacher=None, **cond) -> Tensor:
            t, r = self.times(f, u.to(torch.float64).cpu())
            t, r = t.to(x0.device), r.to(x0.device)
            state = rng_state(x0.device)
            f_t = f(x0 + expand(t, x0).to(x0.dtype) * noise, t, **cond)
            with torch.no_grad():
                set_rng_state(x0.device, state)  # the same dropout mask for the target pass (ECT)
                r_call = torch.where(r > 0, r, t)
                f_r = f(x0 + expand(r, x0).to(x0.dtype) * noise, r_call, **cond)
                target = torch.where(expand(r > 0, x0), f_r, x0)
            return ect_loss(f_t, target, t, r, self.settings.huber_c)

        return loss

    def step(self, engine, images, labels) -> StepLosses:
        out = super().step(engine, images, labels)
        out.logs["train/ect_stage"] = torch.tensor(float(self.stage))  # the gap shrinks by q per stage
        return out

    def flops_at(self, engine, batch_size: int, width: float) -> int:
        """A forward and backward pass, plus the target's forward pass."""
        forward = engine.training_flops_at(batch_size, width, backward=False)
        return engine.training_flops_at(batch_size, width) + forward


@dataclass(frozen=True)
class MeanFlowSettings:
    mean: float = -0.4
    std: float = 1.0
    ratio: float = 0.25
    p: float = 1.0
    c: float = 1e-3
    guidance_scale: float = 1.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        TimeSampler(self.mean, self.std, self.ratio)  # checks them
        lo, hi = self.guidance_interval
        if not 0 <= lo < hi <= 1 or self.guidance_scale < 1:
            raise ValueError(
                f"objective_options: guidance_scale must be >= 1 and guidance_interval a range in [0, 1], got "
                f"{self.guidance_scale} and {list(self.guidance_interval)}"
            )


class MeanFlow(Objective):
    """MeanFlow (Geng et al. 2025; :mod:`pyramid_dm.diffusion.training.meanflow`)."""

    name = "meanflow"
    model_kind = "meanflow"
    default_plan = ("meanflow", 1)
    network_options = {"interval_embedding": True}

    def __init__(self, settings: MeanFlowSettings, num_classes: int = 0, label_dropout: float = 0.0):
        self.settings, self.num_classes = settings, num_classes
        self.times = TimeSampler(settings.mean, settings.std, settings.ratio)
        self.guided = settings.guidance_scale != 1.0
        if self.guided and not (num_classes and label_dropout > 0):
            raise ValueError(
                "objective_options.guidance_scale folds classifier-free guidance into training: it needs a "
                "class-conditional model with label_dropout > 0"
            )
        hint = f" (trained with guidance {settings.guidance_scale:g} built in)" if self.guided else ""
        self.guidance_refusal = NO_GUIDANCE.format(
            kind="MeanFlow", hint=f"{hint}; fold guidance into training with objective_options.guidance_scale"
        )

    @classmethod
    def from_options(cls, o) -> MeanFlow:
        if not PREDICTIONS[o.prediction].velocity or o.schedule != "flow":
            raise ValueError(
                f"objective 'meanflow' learns flow matching's average velocity: set prediction: flow and schedule: "
                f"flow (got prediction {o.prediction!r}, schedule {o.schedule!r})"
            )
        return cls(settings_from(MeanFlowSettings, o, cls.name), o.classes, o.label_dropout)

    def wrap_denoiser(self, denoiser):
        return AverageVelocity(denoiser)

    def init_keys(self) -> tuple[str, ...]:
        return ("interval_mlp.", "interval_in.")

    def target_velocity(self, f: AverageVelocity, z: Tensor, t: Tensor, v: Tensor, cond: dict) -> Tensor:
        """v, or with guidance folded in w v + (1 - w) u(z, t, t | null) for labelled samples inside the interval."""
        s = self.settings
        labels = cond.get("class_labels")
        if not self.guided or labels is None:
            return v
        null = {**cond, "class_labels": torch.full_like(labels, self.num_classes)}
        with torch.no_grad():
            u_null = velocity(f.denoiser, z, t, t, **null).to(v.dtype)
        lo, hi = s.guidance_interval
        on = (labels != self.num_classes) & (t >= lo) & (t <= hi)
        guided = s.guidance_scale * v + (1 - s.guidance_scale) * u_null
        return torch.where(expand(on, v), guided, v)

    def loss_at(self, f: AverageVelocity, x0: Tensor, noise: Tensor, r: Tensor, t: Tensor, **cond) -> Tensor:
        """Per-sample MeanFlow loss at the given (r, t) (the level loss with its draws made)."""
        check_flow(f.denoiser)
        tt = expand(t, x0).to(x0.dtype)
        z = (1 - tt) * x0 + tt * noise
        v = self.target_velocity(f, z, t, noise - x0, cond)
        u, target = meanflow_target(lambda z_, r_, t_: velocity(f.denoiser, z_, r_, t_, **cond), z, r, t, v)
        return adaptive_loss(u, target, self.settings.p, self.settings.c)

    def level_loss(self, engine):
        def loss(f: AverageVelocity, x0: Tensor, noise: Tensor, u: Tensor, teacher=None, **cond) -> Tensor:
            r, t = self.times.draw(x0.shape[0], device=x0.device)
            return self.loss_at(f, x0, noise, r, t, **cond)

        return loss

    def validation_level_loss(self, engine):
        """The instantaneous velocity's loss ||u(z_t, t, t) - v||^2 at the seeded logit-normal t (r = t: no JVP, and
        a function of the seeds alone, so runs compare)."""

        def loss(f: AverageVelocity, x0: Tensor, noise: Tensor, u: Tensor, teacher=None, **cond) -> Tensor:
            z = torch.special.ndtri(u.to(torch.float64).clamp(1e-7, 1 - 1e-7))
            t = torch.sigmoid(self.settings.mean + self.settings.std * z).to(x0)
            tt = expand(t, x0)
            out = velocity(f.denoiser, (1 - tt) * x0 + tt * noise, t, t, **cond)
            return (out.float() - (noise - x0).float()).pow(2).flatten(1).mean(1)

        return loss

    def flops_at(self, engine, batch_size: int, width: float) -> int:
        """The JVP (a forward pass and its tangent: two forwards), the backward pass through the primal, and the
        null-class forward pass when guidance is folded in."""
        forward = engine.training_flops_at(batch_size, width, backward=False)
        return engine.training_flops_at(batch_size, width) + forward * (1 + int(self.guided))


OBJECTIVES.register("ect", ConsistencyTuning)
OBJECTIVES.register("meanflow", MeanFlow)
