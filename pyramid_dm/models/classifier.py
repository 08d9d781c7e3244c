"""A noise-conditional classifier for classifier guidance (Dhariwal & Nichol 2021), trained with ``fit`` on the same
shards as the diffusion model:

    python -m pyramid_dm fit --config configs/classifier/fashion_mnist_16.yaml

The network is the encoder half of the UNet (:class:`~pyramid_dm.nets.EncoderClassifier`). Each training image is
noised at a time drawn from the diffusion model's schedule (the same ``schedule`` settings as the model's), x~ = x0 +
sigma eps, and read through :class:`~pyramid_dm.diffusion.guidance.classifier.NoisyClassifierFn` (input x~ / sqrt(1 +
sigma^2), c_noise = ln(sigma) / 4), the exact function guidance differentiates. Validation noises each image from its
own seed (comparable across runs) and logs the accuracy per noise level (``val/acc_t<lo>-<hi>``, bins of the
schedule's time) and on the clean images (``val/acc_clean``). The checkpoint's stamp records the data it was trained
on (data set, image shape, classes) and its noise range, which ``sample`` / ``evaluate --classifier`` check.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from ..checkpoints import stamp
from ..diffusion import build_schedule, resolution_shift
from ..diffusion.guidance.classifier import NoisyClassifierFn
from ..engine.classifier import build_classifier
from ..errors import UserError
from ..flops import training_flops
from .common import UNetArgs, check_data_shape, data_batch_size, linear_warmup


class NoisyClassifier(L.LightningModule):
    """Args:
    image_size, channels, num_classes: linked from the data module (labelled data with >= 2 classes).
    net: the encoder's widths and layout, the UNet's keys (:class:`~pyramid_dm.models.UNetArgs`; see
        :class:`~pyramid_dm.nets.EncoderClassifier`).
    schedule, num_timesteps, zero_terminal_snr, schedule_options, shift_reference_resolution: the diffusion model's
        noise schedule (as in :class:`~pyramid_dm.models.DiffusionModel`, its resolution shift included: a model of
        configs/own/ at 64 px shifts by 2 log(32 / 64)): training noise levels are drawn from it, t uniform.
    lr, weight_decay, warmup_steps: AdamW with a linear warm-up.
    label_smoothing: of the cross-entropy.
    noise_bins: validation accuracy is logged in this many equal bins of t.
    """

    family = "classifier"
    flops_per_batch: int | None = None

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        net: UNetArgs | None = None,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        schedule_options: dict | None = None,
        shift_reference_resolution: int | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        label_smoothing: float = 0.0,
        noise_bins: int = 4,
    ):
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 2:
            raise UserError(
                f"a guidance classifier needs labelled data with at least 2 classes; the data has {num_classes} "
                "(data.init_args.shards must record its classes)"
            )
        try:
            shift = resolution_shift(image_size, shift_reference_resolution) if shift_reference_resolution else 0.0
            self.schedule = build_schedule(
                schedule,
                num_timesteps,
                zero_terminal_snr=zero_terminal_snr,
                log_snr_shift=shift,
                options=schedule_options,
                resolution=image_size,
            )
        except ValueError as e:
            raise UserError(f"model: {e}") from None
        if noise_bins < 1:
            raise UserError(f"model.noise_bins must be >= 1, got {noise_bins}")
        self.net = build_classifier(self.hparams)
        self.classifier = NoisyClassifierFn(self.net)
        self.val_loss, self.val_acc_clean = MeanMetric(), MeanMetric()
        self.val_acc = torch.nn.ModuleList(MeanMetric() for _ in range(noise_bins))
        self.data_record: dict = {}

    def noisy_logits(self, images: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        sigma = self.schedule.sigma(t.double().cpu()).to(images.device)
        x_tilde = images.double() + sigma.reshape(-1, 1, 1, 1) * noise.double()  # float64: sigma reaches 2e4
        return self.classifier.logits(x_tilde, sigma)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels, _ = batch
        if (labels < 0).any():
            raise UserError("the guidance classifier's data has unlabelled images (label -1); it needs every label")
        t = self.schedule.sample_t(images.shape[0], device="cpu")
        logits = self.noisy_logits(images, t, torch.randn_like(images))
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == labels).float().mean())
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels, seeds = batch
        u, noise = [], []
        for s in seeds.tolist():
            g = torch.Generator().manual_seed(int(s))
            u.append(torch.rand((), generator=g))
            noise.append(torch.randn(images.shape[1:], generator=g))
        t = self.schedule.from_uniform(torch.stack(u))
        logits = self.noisy_logits(images, t, torch.stack(noise).to(images))
        self.val_loss.update(F.cross_entropy(logits.float(), labels, reduction="none"))
        correct = (logits.argmax(1) == labels).float()
        bins = self.hparams.noise_bins
        index = (t * bins).ceil().clamp(1, bins).long() - 1  # t in ((k) / bins, (k + 1) / bins]
        for k in range(bins):  # every bin updated on every rank (weight 0 where empty), so their syncs agree
            self.val_acc[k].update(correct, weight=(index == k).to(correct))
        clean = self.classifier.logits(images, torch.zeros((), dtype=torch.float64))
        self.val_acc_clean.update((clean.argmax(1) == labels).float())

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True)
        self.log("val/acc_clean", self.val_acc_clean.compute(), prog_bar=True)
        bins = self.hparams.noise_bins
        for k, metric in enumerate(self.val_acc):
            acc = metric.compute()
            if torch.isfinite(acc):  # a bin no validation image fell into is not logged
                self.log(f"val/acc_t{k / bins:.2f}-{(k + 1) / bins:.2f}", acc)
            metric.reset()
        self.val_loss.reset()
        self.val_acc_clean.reset()

    def on_fit_start(self) -> None:
        check_data_shape(self, "classifier")
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "manifest"):
            self.data_record = {"dataset": dm.dataset_name, "shards": str(dm.manifest.path)}
        batch_size = data_batch_size(self)
        if batch_size:
            h = self.hparams
            shape = (h.channels, h.image_size, h.image_size)
            self.flops_per_batch = training_flops(lambda: build_classifier(h), shape, batch_size)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        h = self.hparams
        checkpoint["pyramid_dm"] = stamp(
            self.family,
            type(self),
            data=self.data_record or None,
            image_shape=[h.channels, h.image_size, h.image_size],
            num_classes=h.num_classes,
            schedule=self.schedule.name,
            sigma_range=list(self.schedule.sigma_range()),
        )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.data_record = dict((checkpoint.get("pyramid_dm") or {}).get("data") or {})

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.AdamW(self.net.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        return {"optimizer": opt, "lr_scheduler": linear_warmup(opt, h.warmup_steps)}
