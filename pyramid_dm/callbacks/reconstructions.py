"""Stage-one monitoring: reconstruction grids and the FID-proxy of reconstructions of validation images."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from .. import compat
from ..eval.features import build_features, extract
from ..eval.quality import fid
from ..eval.real_features import real_features
from ..images import make_grid, save_png


class ReconstructionGrid(L.Callback):
    """After each validation: the first ``num_images`` validation images (first column), their reconstruction from
    the coarsest level alone, from the two coarsest, ... and from all levels (last column), one row per image, logged
    as ``reconstructions`` and saved in ``samples/``."""

    def __init__(self, num_images: int = 16):
        super().__init__()
        self.num_images = num_images
        self.images: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.images is None or len(self.images) < self.num_images:
            more = batch[0][: self.num_images].detach()
            self.images = more if self.images is None else torch.cat([self.images, more])[: self.num_images]

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and self.images is not None:
            self.log_grid(trainer, pl_module)

    @rank_zero_only
    @torch.no_grad()
    def log_grid(self, trainer, pl_module) -> None:
        x = self.images.to(pl_module.device)
        columns = [x] + [pl_module.reconstruct(x, k) for k in range(1, pl_module.net.levels + 1)]
        grid = make_grid(torch.stack(columns, dim=1).flatten(0, 1).clamp(-1, 1), nrow=len(columns))
        step = trainer.global_step
        caption = f"step {step} | original, then decoded from the coarsest 1..{pl_module.net.levels} levels"
        if trainer.default_root_dir:
            out = Path(trainer.default_root_dir) / "samples"
            out.mkdir(parents=True, exist_ok=True)
            save_png(grid, out / f"reconstructions-step{step:08d}.png")
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(
                    key="reconstructions", images=[grid], caption=[caption], step=compat.logging_step(trainer)
                )


class ReconstructionQuality(L.Callback):
    """After each validation: ``val/rec_fid_<features>``, the FID-proxy between the reconstructions of (up to)
    ``num_images`` validation images and the real images of ``real_split``, in the same feature space as the
    diffusion models' sample FID (so a first stage's ceiling can be read against them)."""

    def __init__(self, num_images: int = 1000, features: str = "auto", real_split: str = "train"):
        super().__init__()
        self.num_images, self.features, self.real_split = num_images, features, real_split
        self.real = None
        self.feats: list[torch.Tensor] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            dm = trainer.datamodule
            self.extractor = build_features(self.features, dm.manifest.name)
            if trainer.is_global_zero:
                self.real = real_features(dm.manifest, self.real_split, self.extractor, dm.image_size, None)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.feats = []

    @torch.no_grad()
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or sum(len(f) for f in self.feats) >= self.num_images:
            return
        rec = pl_module.reconstruct(batch[0]).clamp(-1, 1)
        rec = (rec.mul(127.5).add(127.5).round() / 127.5 - 1).float()  # quantised like the real PNGs
        self.feats.append(extract(self.extractor.to(pl_module.device), rec).cpu())

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not hasattr(self, "extractor"):
            return
        dim = self.extractor.num_features
        mine = torch.cat(self.feats) if self.feats else torch.zeros(0, dim)
        # ranks may hold different numbers of validation images: pad to the largest count, gather, trim
        counts = pl_module.all_gather(torch.tensor(len(mine), device=pl_module.device)).reshape(-1)
        padded = torch.zeros(int(counts.max()), dim, device=pl_module.device)
        padded[: len(mine)] = mine.to(pl_module.device)
        gathered = pl_module.all_gather(padded).reshape(len(counts), -1, dim)
        if not trainer.is_global_zero:
            return
        fake = torch.cat([g[: int(c)] for g, c in zip(gathered, counts)]).cpu()
        if len(fake) < 2:
            return
        value = fid(self.real, fake)
        for logger in trainer.loggers:
            logger.log_metrics({f"val/rec_fid_{self.extractor.name}": value}, step=compat.logging_step(trainer))
