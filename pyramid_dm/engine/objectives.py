"""Training objectives: what one training step optimises, as parts behind one interface.

An objective gives the engine's training step its losses (:meth:`Objective.step`: the total to back-propagate and the
named values to log), its validation losses (:meth:`Objective.validation`: per-sample losses under keys such as
``val/loss``, drawn from each sample's own seed so that runs compare) and its cost (:meth:`Objective.training_flops`:
network forward + backward FLOPs of one step). The LightningModule logs whatever they return; nothing outside an
objective knows what it is. A new objective (consistency training, MeanFlow, ...) is one subclass registered in
:data:`OBJECTIVES`.

- :class:`Denoising`: the diffusion loss of every level (or one sampled level) at the network's full width.
- :class:`Sandwich`: a slimmable supernet trained by the sandwich rule (:mod:`.supernet`): every drawn width's
  denoising loss on the same batch, summed; optional in-place distillation toward the largest width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..nets.slimmable import AtWidth, use_width
from ..registry import Registry
from .supernet import SandwichRule


@dataclass
class StepLosses:
    """A training step's loss to back-propagate and what to log (``train/loss`` is shown on the progress bar)."""

    total: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class Objective:
    name = "objective"

    @classmethod
    def from_options(cls, o) -> Objective:
        """The objective for a model's options ``o`` (:class:`~.families.DiffusionOptions`); a ValueError names an
        option it needs and lacks."""
        return cls()

    def step(self, engine, images: Tensor, labels: Tensor) -> StepLosses:
        raise NotImplementedError

    def validation_keys(self) -> list[str]:
        """The keys :meth:`validation` returns (``val/loss`` first)."""
        return ["val/loss"]

    def validation(self, engine, images: Tensor, labels: Tensor, seeds: Tensor, net: nn.Module) -> dict[str, Tensor]:
        """Per-sample validation losses of ``net`` (the EMA weights), each sample's draws from its own seed."""
        return {"val/loss": engine.seeded_loss(images, labels, seeds, net)}

    def training_flops(self, engine, batch_size: int) -> int:
        """Network FLOPs (forward + backward) of one training step of ``batch_size`` samples."""
        return engine.training_flops_at(batch_size, 1.0)


class Denoising(Objective):
    """The denoising loss (:meth:`~.engine.DiffusionEngine.training_loss`)."""

    name = "denoising"

    def step(self, engine, images, labels) -> StepLosses:
        loss, level = engine.training_loss(images, labels)
        logs = {"train/loss": loss}
        if level is not None:
            logs[f"train/loss_level{level}"] = loss
        return StepLosses(loss, logs)


class Sandwich(Objective):
    """The sandwich rule of a slimmable supernet (``model.step_aware``)."""

    name = "sandwich"

    def __init__(self, rule: SandwichRule):
        self.rule = rule

    @classmethod
    def from_options(cls, o) -> Sandwich:
        if not o.supernet:
            raise ValueError("objective 'sandwich' trains a slimmable supernet: set model.step_aware (its widths)")
        return cls(o.supernet)

    def terms(self, engine, images: Tensor, labels: Tensor) -> list[tuple[float, Tensor, int | None]]:
        """(width, mean loss, level trained alone or None) of each width this step trains, each with its own
        draws; with ``distill`` the smaller widths also regress the largest width's detached output."""
        rule, out = self.rule, []
        for i, width in enumerate(rule.draw()):
            teacher = AtWidth(engine.net, rule.widths[0]) if rule.distill and i > 0 else None
            with use_width(width):
                loss, level = engine.training_loss(images, labels, teacher)
            out.append((width, loss, level))
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
        return StepLosses(total, {**logs, "train/loss": terms[0][1], "train/loss_sandwich": total})

    def validation_keys(self) -> list[str]:
        return ["val/loss", *(f"val/loss_w{w:g}" for w in self.rule.widths[1:])]

    def validation(self, engine, images, labels, seeds, net) -> dict[str, Tensor]:
        out = super().validation(engine, images, labels, seeds, net)
        for width in self.rule.widths[1:]:  # the same seeds at every width
            with use_width(width):
                out[f"val/loss_w{width:g}"] = engine.seeded_loss(images, labels, seeds, net)
        return out

    def training_flops(self, engine, batch_size: int) -> int:
        """The expected FLOPs of a step: the widths it draws, and the teacher's forward passes with ``distill``."""
        forward = lambda w: engine.training_flops_at(batch_size, w, backward=False)  # noqa: E731
        return int(self.rule.expected_flops(lambda w: engine.training_flops_at(batch_size, w), forward))


OBJECTIVES: Registry[type[Objective]] = Registry("objective")
OBJECTIVES.register("denoising", Denoising)
OBJECTIVES.register("sandwich", Sandwich)
