"""Training objectives: what one training step optimises, as parts behind one interface.

An objective gives the engine's training step its losses (:meth:`Objective.step`: the total to back-propagate and the
named values to log), its validation losses (:meth:`Objective.validation`: per-sample losses under keys such as
``val/loss``, drawn from each sample's own seed so that runs compare) and its cost (:meth:`Objective.training_flops`:
network forward + backward FLOPs of one step). The LightningModule logs whatever they return; nothing outside an
objective knows what it is. A new objective is one subclass registered in :data:`OBJECTIVES`.

An objective also says what model it trains: its per-level loss (:meth:`Objective.level_loss`, run by the engine
for every level of any layout, so a pyramid's levels and Pyramidal Flow's stages train with it), the denoiser the
samplers call (:meth:`Objective.wrap_denoiser`), the samplers that fit it (:attr:`Objective.model_kind`) and the
sampling wrappers it refuses (:meth:`Objective.check_sampling`), extra network inputs (:attr:`network_options`), and
what it needs of the run (:meth:`begin_step`, :meth:`check_run`, :meth:`init_keys`).

- :class:`Denoising`: the diffusion loss of every level (or one sampled level) at the network's full width.
- :class:`Sandwich`: a slimmable supernet trained by the sandwich rule (:mod:`.supernet`): every drawn width's loss
  of an inner objective (denoising, or a few-step one) on the same batch, summed; optional in-place distillation
  toward the largest width (denoising only).
- Few-step objectives (:mod:`.few_step`): consistency tuning (``ect``) and ``meanflow``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..diffusion import SAMPLERS, get_sampler
from ..errors import UserError
from ..nets.slimmable import AtWidth, use_width
from ..registry import Registry
from .supernet import SandwichRule
from .wrappers import Guidance


@dataclass
class StepLosses:
    """A training step's loss to back-propagate and what to log (``train/loss`` is shown on the progress bar)."""

    total: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


def level_logs(engine, per_level: dict[int, Tensor]) -> dict[str, Tensor]:
    """``train/loss_level{l}`` of each trained level of a multi-level model (nothing for one level)."""
    return {f"train/loss_level{lv}": v for lv, v in per_level.items()} if engine.num_levels > 1 else {}


class Objective:
    name = "objective"
    model_kind = (
        "diffusion"  # the samplers that fit the model it trains (:attr:`~pyramid_dm.diffusion.SamplerSpec.kind`)
    )
    network_options: dict = {}  # added to the network's options (an extra input the objective feeds)
    guidance_refusal: str | None = None  # why sampling-time classifier-free guidance cannot apply (None: it can)
    default_plan: tuple[str, int] = ("dpmpp_2m", 20)  # the sampler and steps a model samples with unless configured

    @classmethod
    def from_options(cls, o) -> Objective:
        """The objective for a model's options ``o`` (:class:`~.families.DiffusionOptions`); a ValueError names an
        option it needs and lacks."""
        if o.objective_options:
            raise ValueError(f"objective {cls.name!r} takes no objective_options, got {sorted(o.objective_options)}")
        return cls()

    def level_loss(self, engine):
        """One level's per-sample loss ``(denoiser, x0, noise, u, teacher, **cond)`` that the engine runs for every
        level (default: the diffusion loss, :meth:`~pyramid_dm.diffusion.DiffusionLoss.level_loss`)."""
        return engine.loss_fn.level_loss

    def wrap_denoiser(self, denoiser):
        """The denoiser the samplers call, made from the parameterization's (default: itself)."""
        return denoiser

    def begin_step(self, step: int) -> None:
        """Called before every training step with the global step (a schedule over training reads it here)."""

    def check_run(self, max_steps: int | None) -> None:
        """A ValueError when a run of ``max_steps`` cannot train this objective well (checked when fit starts)."""

    def init_keys(self) -> tuple[str, ...]:
        """Network weights a model initialised from another checkpoint (``init_from``) may lack: inputs this
        objective adds, which start at zero."""
        return ()

    def check_sampling(self, samplers: list[str], wrappers, any_sampler: bool = False) -> None:
        """A UserError for a sampler made for another kind of model (unless ``any_sampler``), or for sampling-time
        guidance this model cannot use."""
        for name in dict.fromkeys(samplers):
            kind = get_sampler(name).kind
            if kind != self.model_kind and not any_sampler:
                raise UserError(
                    f"sampler {name!r} samples {kind} models, but this model was trained with objective "
                    f"{self.name!r} ({self.model_kind} model): use a {self.model_kind} sampler "
                    f"({', '.join(sampler_names(self.model_kind))}), or pass any_sampler (--any_sampler) to sample "
                    "it anyway"
                )
        guided = [w for w in wrappers if isinstance(w, Guidance) and w.scale != 1.0]
        if guided and self.guidance_refusal:
            raise UserError(f"guidance {guided[0].scale:g}: {self.guidance_refusal}")

    def step(self, engine, images: Tensor, labels: Tensor) -> StepLosses:
        """The mean of the per-level loss over a training batch (:meth:`level_loss`, every level or one sampled)."""
        loss, per_level = engine.training_loss(images, labels)
        return StepLosses(loss, {"train/loss": loss, **level_logs(engine, per_level)})

    def validation_keys(self) -> list[str]:
        """The keys :meth:`validation` returns (``val/loss`` first)."""
        return ["val/loss"]

    def validation(self, engine, images: Tensor, labels: Tensor, seeds: Tensor, net: nn.Module) -> dict[str, Tensor]:
        """Per-sample validation losses of ``net`` (the EMA weights), each sample's draws from its own seed."""
        return {"val/loss": engine.seeded_loss(images, labels, seeds, net, self.validation_level_loss(engine))}

    def validation_level_loss(self, engine):
        """The per-level loss of :meth:`validation`, a function of the seeded draws only (default: the training one)."""
        return self.level_loss(engine)

    def training_flops(self, engine, batch_size: int) -> int:
        """Network FLOPs (forward + backward) of one training step of ``batch_size`` samples."""
        return self.flops_at(engine, batch_size, 1.0)

    def flops_at(self, engine, batch_size: int, width: float) -> int:
        """:meth:`training_flops` at ``width`` (default: one forward and backward pass)."""
        return engine.training_flops_at(batch_size, width)


class Denoising(Objective):
    """The denoising loss (:meth:`~.engine.DiffusionEngine.training_loss`)."""

    name = "denoising"


class Sandwich(Objective):
    """The sandwich rule of a slimmable supernet (``model.step_aware``) over an ``inner`` objective (default:
    denoising): every drawn width trains the inner objective's loss; the model is the inner objective's."""

    name = "sandwich"

    def __init__(self, rule: SandwichRule, inner: Objective | None = None):
        self.rule, self.inner = rule, inner or Denoising()
        if rule.distill and not isinstance(self.inner, Denoising):
            raise ValueError(f"step_aware.distill regresses the denoising loss; objective {self.inner.name!r} has none")
        self.model_kind, self.network_options = self.inner.model_kind, self.inner.network_options
        self.default_plan = self.inner.default_plan
        self.guidance_refusal = self.inner.guidance_refusal

    @classmethod
    def from_options(cls, o) -> Sandwich:
        if not o.supernet:
            raise ValueError("objective 'sandwich' trains a slimmable supernet: set model.step_aware (its widths)")
        return cls(o.supernet)

    def level_loss(self, engine):
        return self.inner.level_loss(engine)

    def validation_level_loss(self, engine):
        return self.inner.validation_level_loss(engine)

    def wrap_denoiser(self, denoiser):
        return self.inner.wrap_denoiser(denoiser)

    def begin_step(self, step: int) -> None:
        self.inner.begin_step(step)

    def check_run(self, max_steps: int | None) -> None:
        self.inner.check_run(max_steps)

    def init_keys(self) -> tuple[str, ...]:
        return self.inner.init_keys()

    def terms(self, engine, images: Tensor, labels: Tensor) -> list[tuple[float, Tensor, dict[int, Tensor]]]:
        """(width, mean loss, each trained level's loss) of each width this step trains, each with its own
        draws; with ``distill`` the smaller widths also regress the largest width's detached output."""
        rule, out = self.rule, []
        for i, width in enumerate(rule.draw()):
            teacher = AtWidth(engine.net, rule.widths[0]) if rule.distill and i > 0 else None
            with use_width(width):
                loss, per_level = engine.training_loss(images, labels, teacher)
            out.append((width, loss, per_level))
        return out

    def step(self, engine, images, labels) -> StepLosses:
        """Every drawn width's loss, summed (one backward); ``train/loss`` is the largest width's, so it reads like a
        plain run's."""
        terms = self.terms(engine, images, labels)
        per_width: dict[float, list[Tensor]] = {}
        for width, loss, _ in terms:
            per_width.setdefault(width, []).append(loss.detach())
        logs = {f"train/loss_w{width:g}": torch.stack(losses).mean() for width, losses in per_width.items()}
        total = sum(loss for _, loss, _ in terms)
        levels = level_logs(engine, terms[0][2])  # the largest width's, as train/loss
        return StepLosses(total, {**logs, **levels, "train/loss": terms[0][1], "train/loss_sandwich": total})

    def validation_keys(self) -> list[str]:
        return ["val/loss", *(f"val/loss_w{w:g}" for w in self.rule.widths[1:])]

    def validation(self, engine, images, labels, seeds, net) -> dict[str, Tensor]:
        out = super().validation(engine, images, labels, seeds, net)
        for width in self.rule.widths[1:]:  # the same seeds at every width
            with use_width(width):
                loss = self.validation_level_loss(engine)
                out[f"val/loss_w{width:g}"] = engine.seeded_loss(images, labels, seeds, net, loss)
        return out

    def training_flops(self, engine, batch_size: int) -> int:
        """The expected FLOPs of a step: the widths it draws (each as the inner objective trains it), and the
        teacher's forward passes with ``distill``."""
        forward = lambda w: engine.training_flops_at(batch_size, w, backward=False)  # noqa: E731
        with_inner = lambda w: self.inner.flops_at(engine, batch_size, w)  # noqa: E731
        return int(self.rule.expected_flops(with_inner, forward))


OBJECTIVES: Registry[type[Objective]] = Registry("objective")
OBJECTIVES.register("denoising", Denoising)
OBJECTIVES.register("sandwich", Sandwich)


def sampler_names(kind: str) -> list[str]:
    """The registered samplers of models of ``kind``."""
    return sorted(name for name, spec in SAMPLERS.items() if spec.kind == kind)
