"""The diffusion LightningModules' optimizer: AdamW with a linear warm-up (or the optimizer and scheduler callables
given in YAML), its learning rate scaled with the effective batch (``lr_scaling``), and what it logs of that."""

from __future__ import annotations

import torch

from ..errors import UserError
from .common import data_batch_size, linear_warmup

LR_SCALINGS = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": lambda ratio: ratio**0.5}


class ScaledOptimizer:
    """Mixed into a LightningModule whose hparams hold ``lr``, ``lr_scaling``, ``lr_reference_batch``,
    ``weight_decay``, ``betas``, ``warmup_steps`` and ``fused_optimizer``, and whose ``engine.net`` is what trains."""

    def init_optimizer(self, optimizer, lr_scheduler) -> None:
        if self.hparams.lr_scaling not in LR_SCALINGS:
            raise UserError(f"model.lr_scaling {self.hparams.lr_scaling!r} is not one of {list(LR_SCALINGS)}")
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler

    def effective_batch_size(self) -> int | None:
        batch = data_batch_size(self)
        return batch and batch * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def lr_factor(self) -> float:
        h, batch = self.hparams, self.effective_batch_size()
        return LR_SCALINGS[h.lr_scaling](batch / h.lr_reference_batch) if batch else 1.0

    def effective_lr(self) -> float:
        return self.hparams.lr * self.lr_factor()

    def on_train_start(self) -> None:
        if self.logger is not None:
            self.logger.log_hyperparams(
                {
                    "world_size": self.trainer.world_size,
                    "effective_batch_size": self.effective_batch_size(),
                    "effective_lr": getattr(self, "base_lr", self.effective_lr()),
                }
            )

    def configure_optimizers(self):
        h, params = self.hparams, self.engine.net.parameters()
        if self.optimizer_factory is None:
            params = list(params)
            fused = h.fused_optimizer
            if fused is None:  # auto: the fused kernel where the weights are on a GPU (PyTorch's own default is off)
                fused = bool(params) and params[0].device.type == "cuda"
            opt = torch.optim.AdamW(
                params, lr=self.effective_lr(), weight_decay=h.weight_decay, betas=tuple(h.betas), fused=fused
            )
        else:
            opt = self.optimizer_factory(params)
            for group in opt.param_groups:
                group["lr"] *= self.lr_factor()
        self.base_lr = opt.param_groups[0]["lr"]  # before a scheduler changes it: what effective_lr logs
        if self.lr_scheduler_factory is not None:
            return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_scheduler_factory(opt), "interval": "step"}}
        return {"optimizer": opt, "lr_scheduler": linear_warmup(opt, h.warmup_steps)}
