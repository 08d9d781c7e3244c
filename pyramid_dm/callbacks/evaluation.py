"""In-training FID/KID on the EMA weights, every N steps, split across DDP ranks, within a time budget."""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch

from .. import compat
from ..eval.features import build_features, extract
from ..eval.image_metrics import IMAGE_METRICS, image_metrics, real_images
from ..eval.quality import quality_metrics
from ..eval.real_features import real_features
from ..eval.sampling import generate
from .samples import check_sampler

log = logging.getLogger(__name__)


class SampleQuality(L.Callback):
    """Every ``every_n_steps`` training steps: draw ``num_samples`` images with a fast sampler from fixed seeds (the
    same noise every time, so the curve shows the model, not the noise), each rank a share of the batches; gather
    their features on rank 0 and log ``val/fid_<space>``, ``val/kid_<space>``, precision/recall, the number of
    samples and the seconds spent. ``sampler`` / ``steps`` None use the model's own (a pyramid's per-level budgets).

    ``time_budget_s`` bounds the generation: after the first batch every rank knows its batch time, the slowest rank's
    time decides how many batches fit, and fewer samples are drawn (with a warning) when the budget is short.
    Real features come from the data module's shards (``real_split``) and are cached across runs. ``metrics`` adds
    image metrics (``swd``, ``spectrum``: :mod:`pyramid_dm.eval.image_metrics`) against as many real images.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num_samples: int = 1000,
        sampler: str | None = None,
        steps: int | None = None,
        batch_size: int = 250,
        features: str = "auto",
        real_split: str = "val",
        num_real: int | None = None,
        time_budget_s: float = 300.0,
        kid_subset_size: int = 1000,
        seed: int = 0,
        metrics: list[str] | None = None,
    ):
        super().__init__()
        self.metrics = list(metrics or [])
        for name in self.metrics:
            if name not in IMAGE_METRICS:
                raise ValueError(f"{type(self).__name__}.metrics: {IMAGE_METRICS.unknown(name)}")
        check_sampler(f"{type(self).__name__}.sampler", sampler, steps)
        self.every_n_steps, self.num_samples, self.sampler, self.steps = every_n_steps, num_samples, sampler, steps
        self.batch_size, self.features, self.real_split, self.num_real = batch_size, features, real_split, num_real
        self.time_budget_s, self.kid_subset_size, self.seed = time_budget_s, kid_subset_size, seed
        self._last_step = -1
        self.real = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = trainer.datamodule
        self.extractor = build_features(self.features, dm.manifest.name)
        if trainer.is_global_zero:  # only rank 0 computes the metrics, so only it needs the real features
            self.real = real_features(dm.manifest, self.real_split, self.extractor, dm.image_size, self.num_real)
            if self.metrics:
                count = min(self.num_samples, self.num_real or dm.manifest.count(self.real_split))
                self.real_images = real_images(dm.manifest, self.real_split, dm.image_size, count)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self.evaluate(trainer, pl_module)

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module) -> None:
        start = time.perf_counter()
        world, rank = trainer.world_size, trainer.global_rank
        batch_size = min(self.batch_size, self.num_samples)
        per_rank = math.ceil(math.ceil(self.num_samples / batch_size) / world)
        mine = [rank + world * i for i in range(per_rank)]
        was_training = pl_module.training
        pl_module.eval()
        model = pl_module.for_sampling(ema=True)
        images, _, seconds = generate(model, self.sampler, self.steps, mine[:1], batch_size, self.seed, False)
        slowest = float(trainer.strategy.reduce(torch.tensor(seconds, device=pl_module.device), reduce_op="max"))
        fits = max(1, min(per_rank, int(self.time_budget_s // max(slowest, 1e-9))))
        if fits > 1:
            more, _, _ = generate(model, self.sampler, self.steps, mine[1:fits], batch_size, self.seed, False)
            images = torch.cat([images, more])
        pl_module.train(was_training)
        extractor = self.extractor.to(pl_module.device)
        feats = extract(extractor, images).to(pl_module.device)
        gathered = pl_module.all_gather(feats)  # (world, n, d) on every rank; (n, d) with one rank
        if self.metrics:
            images = pl_module.all_gather(images.to(pl_module.device)).reshape(-1, *images.shape[1:]).cpu()
        if not trainer.is_global_zero:
            return
        fake = gathered.reshape(-1, feats.shape[-1]).cpu()
        if fits < per_rank:
            log.warning(
                "sample quality at step %d: %d of %d samples fit the %.0f s budget (one batch takes %.1f s); raise "
                "time_budget_s or lower num_samples for comparable numbers",
                trainer.global_step,
                len(fake),
                self.num_samples,
                self.time_budget_s,
                slowest,
            )
        space = extractor.name
        metrics = quality_metrics(self.real, fake, space, self.kid_subset_size)
        if self.metrics:
            metrics.update(image_metrics(self.metrics, self.real_images, images, self.seed))
        metrics = {f"val/{k}": v for k, v in metrics.items()}
        metrics.update({f"val/{space}_num_samples": len(fake), f"val/{space}_seconds": time.perf_counter() - start})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=compat.logging_step(trainer))
