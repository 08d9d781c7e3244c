"""Training compute as a first-class axis: cumulative training FLOPs and images seen, logged and in every checkpoint.

The FLOPs of one batch are the module's own count (``flops_per_batch``: ``torch.utils.flop_counter``, forward +
backward, every level of a pyramid and, for a step-aware supernet, the expected cost of the widths it trains); this
callback adds them up over every micro-batch of every rank. A frozen first stage's encoding is not counted (it can
be done once, ``shards encode``), nor is the first stage's own training: a latent run's total adds its autoencoder's
``training_cost`` (the autoencoder's checkpoint has one too). With ``exp.max_train_flops`` the run ends at the first
optimizer step at which the budget is reached, like ``trainer.max_steps`` (whichever comes first), so that runs of
different models can be trained to the same compute.
"""

from __future__ import annotations

import logging
import math

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from .. import compat
from ..errors import UserError
from ..models.common import data_batch_size

log = logging.getLogger("lightning.pytorch.callbacks.model_summary")
KEY = "training_cost"  # the checkpoint's record: {"flops", "images", "step", "flops_per_image"}


class TrainingCost(Callback):
    """Logs ``train/flops`` (cumulative training FLOPs, all ranks) and ``train/images`` (images seen, all ranks), and
    writes ``checkpoint["training_cost"]``. Restored on resume; a checkpoint from before this callback existed is
    given the count its step implies (steps x the current cost per step), with a notice."""

    def __init__(self, max_train_flops: float | None = None):
        if max_train_flops is not None and not max_train_flops > 0:
            raise UserError(f"exp.max_train_flops must be > 0, got {max_train_flops}")
        self.max_train_flops = max_train_flops
        self.flops, self.images, self.restored = 0.0, 0, False

    def per_image(self, pl_module) -> float | None:
        per_batch, batch = getattr(pl_module, "flops_per_batch", None), data_batch_size(pl_module)
        return per_batch / batch if per_batch and batch else None

    def on_train_start(self, trainer, pl_module) -> None:
        per_image, batch = self.per_image(pl_module), data_batch_size(pl_module)
        per_step = per_image * batch * trainer.world_size * trainer.accumulate_grad_batches if per_image else None
        if trainer.global_step > 0 and not self.restored and per_step:
            self.flops = float(trainer.global_step * per_step)
            self.images = trainer.global_step * batch * trainer.world_size * trainer.accumulate_grad_batches
            rank_zero_info(
                "the checkpoint has no training_cost record (written before it was kept): counted as "
                f"{trainer.global_step} steps x {per_step:.3g} FLOPs = {self.flops:.3g} training FLOPs"
            )
        if self.max_train_flops is None:
            return
        if not per_step:
            raise UserError("exp.max_train_flops needs the model's training FLOPs, which this model does not count")
        steps = trainer.global_step + max(0, math.ceil((self.max_train_flops - self.flops) / per_step))
        if trainer.max_steps < 0 or steps < trainer.max_steps:
            trainer.fit_loop.epoch_loop.max_steps = steps
            rank_zero_info(
                f"exp.max_train_flops {self.max_train_flops:.3g}: training to step {steps} "
                f"({per_step:.3g} FLOPs per step)"
            )
        if steps <= trainer.global_step:
            rank_zero_warn(f"exp.max_train_flops {self.max_train_flops:.3g} is spent already ({self.flops:.3g} FLOPs)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        n = int(batch[0].shape[0]) * trainer.world_size
        self.images += n
        per_image = self.per_image(pl_module)
        if per_image:
            self.flops += per_image * n
            pl_module.log("train/flops", self.flops, on_step=True, on_epoch=False, rank_zero_only=True)
        pl_module.log("train/images", float(self.images), on_step=True, on_epoch=False, rank_zero_only=True)

    def record(self, trainer) -> dict:
        return {"flops": self.flops, "images": self.images, "step": trainer.global_step}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[KEY] = self.record(trainer)

    def state_dict(self) -> dict:
        return {"flops": self.flops, "images": self.images}

    def load_state_dict(self, state_dict: dict) -> None:
        self.flops, self.images, self.restored = float(state_dict["flops"]), int(state_dict["images"]), True


class CostSummary(ModelSummary):
    """Lightning's model summary, printed when training starts (once the module has counted its step), with the
    training FLOPs per optimizer step (``flops_per_batch``: forward + backward, as :class:`TrainingCost` adds them up)
    in place of Lightning's "Total FLOPs", a forward pass over ``example_input_array``, which these modules do not
    have: it printed 0."""

    def on_fit_start(self, trainer, pl_module) -> None:
        self.flops = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.flops = getattr(pl_module, "flops_per_batch", None)
        super().on_fit_start(trainer, pl_module)

    def summarize(self, summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops, **kwargs) -> None:  # fmt: skip
        if not total_flops:  # nor Lightning's per-module FLOPs column, zeros for the same reason
            summary_data = [(head, values) for head, values in summary_data if head != "FLOPs"]
        table = compat.summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, summary_data
        )
        lines = [line for line in table.splitlines() if "total flops" not in line.lower() or total_flops]
        if self.flops:
            lines.append(
                f"{get_human_readable_count(int(self.flops)):<10} Training FLOPs per step (forward + backward)"
            )
        log.info("\n" + "\n".join(lines))


def with_cost_summary(callbacks: list) -> list:
    """``callbacks`` with the ModelSummary (or RichModelSummary) Lightning adds as a :class:`CostSummary`."""
    plain = (ModelSummary, RichModelSummary)
    return [CostSummary(compat.summary_depth(cb)) if type(cb) in plain else cb for cb in callbacks]
