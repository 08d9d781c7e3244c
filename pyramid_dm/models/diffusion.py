"""The diffusion engine as a LightningModule: it orchestrates, the math lives in ``pyramid_dm.diffusion``.

Pixel, latent and pyramid diffusion differ only in the first stage (``encode``/``decode``; identity here).
"""

from __future__ import annotations

from typing import TypedDict

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from ..diffusion import PredictionDenoiser, build_schedule, diffusion_loss, get_sampler, q_sample, target
from ..diffusion.parameterization import Denoiser, check_prediction
from ..errors import UserError
from ..eval.cost import training_flops as count_training_flops
from ..nets import UNet
from .ema import make_ema

LR_SCALINGS = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": lambda ratio: ratio**0.5}


class UNetArgs(TypedDict, total=False):
    """Network widths and layout (see :class:`pyramid_dm.nets.UNet`); image size and channels come from the data."""

    base_channels: int
    channel_mult: list[int]
    num_res_blocks: int
    attention_resolutions: list[int]
    num_heads: int
    dropout: float
    norm_groups: int


class DiffusionModel(L.LightningModule):
    """Denoising diffusion on the first stage's representation of the images.

    Args:
        image_size, channels, num_classes: linked from the data module's manifest (num_classes 0 = unlabelled data).
        class_conditional: learn a class embedding when the data has labels (label -1 means "no label").
        unet: network layout, :class:`UNetArgs`.
        schedule: ``linear`` or ``cosine``; ``num_timesteps`` T for a discrete schedule, 0 for continuous time.
        prediction: what the network predicts: ``eps``, ``x0`` or ``v``.
        loss_weighting: ``uniform`` or ``min_snr`` (with ``min_snr_gamma``).
        lr, weight_decay, betas, warmup_steps: AdamW with a linear learning-rate warm-up.
        lr_scaling: ``none`` (default: ``lr`` is used as given, whatever the number of GPUs), ``linear`` or ``sqrt``:
            scale ``lr`` by (effective batch / ``lr_reference_batch``) or its square root. The effective batch
            (batch x ranks x accumulation) and the learning rate used are logged as ``effective_batch_size`` and
            ``effective_lr``.
        ema_decay: EMA of the network weights, used for validation and sampling.
        sampler, sample_steps: the default sampler for ``sample()``.
    """

    family = "pixel"

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        class_conditional: bool = True,
        unet: UNetArgs | None = None,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        prediction: str = "eps",
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        lr: float = 2e-4,
        lr_scaling: str = "none",
        lr_reference_batch: int = 128,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        ema_decay: float = 0.999,
        sampler: str = "ddim",
        sample_steps: int = 50,
    ):
        super().__init__()
        self.save_hyperparameters()
        check_prediction(prediction)
        get_sampler(sampler)
        if lr_scaling not in LR_SCALINGS:
            raise UserError(f"model.lr_scaling {lr_scaling!r} is not one of {list(LR_SCALINGS)}")
        self.schedule = build_schedule(schedule, num_timesteps)
        self.num_classes = num_classes if class_conditional else 0
        self.net = _build_unet(self.hparams)
        self.ema = make_ema(self.net, ema_decay)
        self.val_loss = MeanMetric()

    # ---- first stage (identity for pixel diffusion) ------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, latents: Tensor) -> Tensor:
        return latents

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h = self.hparams
        return (h.channels, h.image_size, h.image_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Shape of what the diffusion runs on (the first stage's output)."""
        return self.image_shape

    # ---- diffusion ----------------------------------------------------------------------------------------------
    def _cond(self, labels: Tensor | None) -> dict:
        if not self.num_classes or labels is None:
            return {}
        return {"class_labels": torch.where(labels < 0, self.num_classes, labels)}

    def loss(self, net, images: Tensor, labels: Tensor | None, t: Tensor, noise: Tensor) -> Tensor:
        """Per-sample weighted loss of ``net`` at times ``t`` with the given noise."""
        h = self.hparams
        z = self.encode(images)
        zt, eps = q_sample(z, t, self.schedule, noise)
        alpha, sigma = self.schedule.alpha_sigma(t)
        out = net(zt, t, **self._cond(labels))
        tgt = target(h.prediction, z, eps, alpha, sigma)
        return diffusion_loss(out, tgt, self.schedule.snr(t), h.prediction, h.loss_weighting, h.min_snr_gamma)

    def denoiser(self, ema: bool = True) -> PredictionDenoiser:
        net = self.ema.module if ema else self.net
        return PredictionDenoiser(net, self.schedule, self.hparams.prediction, clip_x0=self.family == "pixel")

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        sampler: str | None = None,
        steps: int | None = None,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        ema: bool = True,
        denoiser: Denoiser | None = None,
        **options,
    ) -> Tensor:
        """Images in [-1, 1], shape (num_samples, C, H, W). ``denoiser`` replaces ``self.denoiser(ema)`` (e.g. a
        :class:`~pyramid_dm.diffusion.CountingDenoiser` around it)."""
        x = torch.randn((num_samples, *self.latent_shape), generator=generator, device=self.device)
        fn = get_sampler(sampler or self.hparams.sampler)
        steps = steps or self.hparams.sample_steps
        cond = self._cond(labels.to(self.device) if labels is not None else None)
        z = fn(denoiser or self.denoiser(ema), x, self.schedule, steps, cond=cond, generator=generator, **options)
        return self.decode(z).clamp(-1, 1)

    def sample_labels(self, start: int, count: int) -> Tensor | None:
        """Class labels for samples ``start .. start + count - 1`` of an evaluation: the classes in turn (balanced)."""
        return torch.arange(start, start + count) % self.num_classes if self.num_classes else None

    # ---- Lightning hooks --------------------------------------------------------------------------------------------
    def check_batch(self, images: Tensor) -> None:
        if tuple(images.shape[1:]) != self.image_shape:
            raise UserError(
                f"data images have shape {tuple(images.shape[1:])} (C, H, W) but the model expects {self.image_shape}: "
                "the model (or its checkpoint) was built for other data; point data.shards at matching shards "
                "or set data.init_args.resize"
            )

    def training_flops(self, batch_size: int) -> int:
        """FLOPs of one training step's network forward + backward, counted by ``torch.utils.flop_counter`` on a
        meta-device copy (no memory, no compute)."""
        return count_training_flops(lambda: _build_unet(self.hparams), self.latent_shape, batch_size)

    def _data_batch_size(self) -> int | None:
        """Per-rank batch size of the attached data module, if it has one."""
        dm = getattr(self.trainer, "datamodule", None)
        return getattr(getattr(dm, "hparams", None), "batch_size", None)

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        batch_size = self._data_batch_size()
        if batch_size:  # read by ThroughputMonitor for flops_per_sec and MFU
            self.flops_per_batch = self.training_flops(batch_size)
        if dm is not None and hasattr(dm, "image_size"):
            h = self.hparams
            got, want = (dm.channels, dm.image_size), (h.channels, h.image_size)
            if got != want:
                raise UserError(
                    f"data {getattr(dm, 'dataset_name', '')!r} gives {got[0]}x{got[1]}x{got[1]} images but the model "
                    f"was built for {want[0]}x{want[1]}x{want[1]} (model.image_size / model.channels)"
                )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pyramid_dm"] = {
            "family": self.family,
            "class_path": f"{type(self).__module__}.{type(self).__name__}",
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        h = checkpoint.get("hyper_parameters", {})
        trained = (h.get("channels"), h.get("image_size"), h.get("image_size"))
        if None not in trained and trained != self.image_shape:
            raise UserError(
                f"the checkpoint was trained on images of shape {trained} (C, H, W) but the data gives "
                f"{self.image_shape}: use the data it was trained on, or drop data.init_args.resize"
            )

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels, _ = batch
        if batch_idx == 0:
            self.check_batch(images)
        t = self.schedule.sample_t(images.shape[0], device=self.device)
        loss = self.loss(self.net, images, labels, t, torch.randn_like(images)).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update_parameters(self.net)

    def on_before_optimizer_step(self, optimizer) -> None:
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))

    def validation_step(self, batch, batch_idx: int) -> None:
        """EMA weights; noise and t drawn from each sample's own seed, so val/loss is comparable across runs."""
        images, labels, seeds = batch
        self.check_batch(images)
        noise, u = [], []
        for s in seeds.tolist():
            g = torch.Generator().manual_seed(int(s))
            u.append(torch.rand((), generator=g))
            noise.append(torch.randn(self.latent_shape, generator=g))
        t = self.schedule.from_uniform(torch.stack(u).to(self.device))
        loss = self.loss(self.ema.module, images, labels, t, torch.stack(noise).to(images.device))
        self.val_loss.update(loss)

    def on_validation_epoch_end(self) -> None:
        # Every rank calls compute() (it syncs), so a rank that got no validation shard cannot hang the others.
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=False)
        self.val_loss.reset()

    def effective_batch_size(self) -> int | None:
        batch = self._data_batch_size()
        return batch and batch * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def effective_lr(self) -> float:
        h, batch = self.hparams, self.effective_batch_size()
        return h.lr * LR_SCALINGS[h.lr_scaling](batch / h.lr_reference_batch) if batch else h.lr

    def on_train_start(self) -> None:
        if self.logger is not None:
            self.logger.log_hyperparams(
                {
                    "world_size": self.trainer.world_size,
                    "effective_batch_size": self.effective_batch_size(),
                    "effective_lr": self.effective_lr(),
                }
            )

    def configure_optimizers(self):
        h = self.hparams
        lr = self.effective_lr()
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=h.weight_decay, betas=tuple(h.betas))
        warmup = max(1, h.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class PixelDiffusion(DiffusionModel):
    """Diffusion directly on pixels (DDPM, Ho et al. 2020): the first stage is the identity."""

    family = "pixel"


def _build_unet(h) -> UNet:
    num_classes = h["num_classes"] if h.get("class_conditional", True) else 0
    return UNet(
        in_channels=h["channels"], image_size=h["image_size"], num_classes=num_classes or None, **(h.get("unet") or {})
    )


def ema_net_from_checkpoint(path: str, map_location="cpu") -> UNet:
    """The EMA weights of a checkpoint, loaded into a bare :class:`UNet` (no Lightning needed to use them)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    net = _build_unet(ckpt["hyper_parameters"])
    prefix = "ema.module."
    net.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return net
