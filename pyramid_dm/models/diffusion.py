"""The diffusion engine as a LightningModule: it orchestrates, the math lives in ``pyramid_dm.diffusion``.

Pixel, latent and pyramid diffusion differ only in the first stage (``encode``/``decode``; identity here).
"""

from __future__ import annotations

from typing import TypedDict

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from ..diffusion import (
    DEFAULT_DISCRETIZATION,
    DISCRETIZATIONS,
    TRAINING_NOISE,
    WEIGHTINGS,
    ClassifierFreeGuidance,
    Denoiser,
    DenoiserFn,
    build_schedule,
    diffusion_loss,
    get_sampler,
    loss_weight,
    network_input,
    network_target,
    resolution_shift,
    training_noise_levels,
)
from ..diffusion import sample as run_sampler
from ..diffusion.parameterization import check_pair, check_prediction
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
        label_dropout: probability of training a sample without its label (the null class), so that the same network
            is also the unconditional model classifier-free guidance needs (Ho & Salimans 2022; 0.1-0.2 typical).
        unet: network layout, :class:`UNetArgs`.
        schedule: ``linear``, ``cosine``, ``sigmoid`` or ``edm``; ``num_timesteps`` T for a discrete schedule, 0 for
            continuous time. ``zero_terminal_snr`` rescales it so its last step is pure noise (needs ``v`` or ``x0``).
            ``shift_reference_resolution`` d_ref shifts its log-SNR by 2 log(d_ref / image_size) (simple diffusion).
        prediction: the parameterization: the network predicts ``eps``, ``x0`` or ``v``, or is ``edm``-preconditioned
            (with ``sigma_data``). Any of them samples with every sampler.
        training_noise: ``schedule`` (t uniform on the schedule) or ``lognormal`` (EDM: ln sigma ~ N(mean, std^2)).
        loss_weighting: ``uniform`` (the network's own MSE), ``min_snr`` (with ``min_snr_gamma``) or ``edm``.
        lr, weight_decay, betas, warmup_steps: AdamW with a linear learning-rate warm-up.
        lr_scaling: ``none`` (default: ``lr`` is used as given, whatever the number of GPUs), ``linear`` or ``sqrt``:
            scale ``lr`` by (effective batch / ``lr_reference_batch``) or its square root. The effective batch
            (batch x ranks x accumulation) and the learning rate used are logged as ``effective_batch_size`` and
            ``effective_lr``.
        ema_decay: EMA of the network weights, used for validation and sampling.
        sampler, sample_steps, discretization: the default sampler for ``sample()`` (``discretization`` None: the
            sampler's own default grid).
    """

    family = "pixel"

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        class_conditional: bool = True,
        label_dropout: float = 0.1,
        unet: UNetArgs | None = None,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        zero_terminal_snr: bool = False,
        shift_reference_resolution: int | None = None,
        prediction: str = "eps",
        sigma_data: float = 0.5,
        training_noise: str = "schedule",
        lognormal_mean: float = -1.2,
        lognormal_std: float = 1.2,
        loss_weighting: str = "uniform",
        min_snr_gamma: float = 5.0,
        lr: float = 2e-4,
        lr_scaling: str = "none",
        lr_reference_batch: int = 128,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        ema_decay: float = 0.999,
        sampler: str = "dpmpp_2m",
        sample_steps: int = 20,
        discretization: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        for key, value, choices in [
            ("prediction", prediction, None),
            ("training_noise", training_noise, TRAINING_NOISE),
            ("loss_weighting", loss_weighting, WEIGHTINGS),
            ("discretization", discretization, (None, *DISCRETIZATIONS)),
        ]:
            if choices is not None and value not in choices:
                raise UserError(f"model.{key} {value!r} is not one of {list(choices)}")
        try:
            check_prediction(prediction)
            get_sampler(sampler)
            shift = resolution_shift(image_size, shift_reference_resolution) if shift_reference_resolution else 0.0
            self.schedule = build_schedule(
                schedule, num_timesteps, zero_terminal_snr=zero_terminal_snr, log_snr_shift=shift
            )
            check_pair(prediction, self.schedule)
        except ValueError as e:
            raise UserError(f"model: {e}") from None
        if not 0 <= label_dropout < 1:
            raise UserError(f"model.label_dropout must lie in [0, 1), got {label_dropout}")
        if lr_scaling not in LR_SCALINGS:
            raise UserError(f"model.lr_scaling {lr_scaling!r} is not one of {list(LR_SCALINGS)}")
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
    def conditioning(self, labels: Tensor | None) -> dict:
        """Network keyword arguments for class ``labels`` (-1, or None for all, is the null class)."""
        if not self.num_classes or labels is None:
            return {}
        labels = labels.to(self.device)
        return {"class_labels": torch.where(labels < 0, self.num_classes, labels)}

    def loss(self, net, images: Tensor, labels: Tensor | None, u: Tensor, noise: Tensor) -> Tensor:
        """Per-sample weighted loss of ``net`` at the noise levels drawn from ``u`` ~ U[0, 1) with the given noise."""
        h = self.hparams
        z = self.encode(images)
        t, sigma = training_noise_levels(self.schedule, u, h.training_noise, h.lognormal_mean, h.lognormal_std)
        x_in = network_input(h.prediction, z, noise, sigma, h.sigma_data)
        out = self.make_denoiser(net).network(x_in, sigma, t, **self.conditioning(labels))
        tgt = network_target(h.prediction, z, noise, sigma, h.sigma_data)
        return diffusion_loss(
            out, tgt, loss_weight(h.prediction, sigma, h.loss_weighting, h.min_snr_gamma, h.sigma_data)
        )

    def make_denoiser(self, net) -> Denoiser:
        h = self.hparams
        return Denoiser(net, self.schedule, h.prediction, h.sigma_data, clip_x0=self.family == "pixel")

    def denoiser(self, ema: bool = True) -> Denoiser:
        """D(x~; sigma) of the EMA (or the raw) network."""
        return self.make_denoiser(self.ema.module if ema else self.net)

    def guided(self, denoiser: DenoiserFn, scale: float, labels: Tensor | None, **options) -> ClassifierFreeGuidance:
        """``denoiser`` with classifier-free guidance of the given scale toward ``labels``."""
        if not self.num_classes:
            raise UserError(f"guidance {scale} needs a class-conditional model; this one has no classes")
        if not self.hparams.get("label_dropout", 0):
            raise UserError(
                f"guidance {scale}: the model was trained with label_dropout=0, so its unconditional (null-class) "
                "branch was never trained; retrain with model.label_dropout > 0 (0.1 is typical)"
            )
        if labels is None:
            raise UserError(f"guidance {scale} needs class labels to guide toward")
        null = self.conditioning(torch.full_like(labels, -1))
        try:
            return ClassifierFreeGuidance(denoiser, scale, null, **options)
        except ValueError as e:
            raise UserError(str(e)) from None

    def default_discretization(self, sampler: str) -> str:
        return self.hparams.get("discretization") or DEFAULT_DISCRETIZATION[sampler]

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        sampler: str | None = None,
        steps: int | None = None,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        ema: bool = True,
        denoiser: DenoiserFn | None = None,
        guidance: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
        guidance_rescale: float = 0.0,
        discretization: str | None = None,
        **options,
    ) -> Tensor:
        """Images in [-1, 1], shape (num_samples, C, H, W). ``denoiser`` replaces ``self.denoiser(ema)`` (e.g. a
        :class:`~pyramid_dm.diffusion.CountingDenoiser` around it); ``guidance`` != 1 applies classifier-free
        guidance toward ``labels``; ``options`` go to the sampler (e.g. ``eta``, ``churn``)."""
        x = torch.randn((num_samples, *self.latent_shape), generator=generator, device=self.device)
        sampler = sampler or self.hparams.sampler
        den = denoiser or self.denoiser(ema)
        if guidance != 1.0:
            interval = {"interval": tuple(guidance_interval)} if guidance_interval else {}
            den = self.guided(den, guidance, labels, rescale=guidance_rescale, **interval)
        z = run_sampler(
            den,
            x,
            self.schedule,
            sampler,
            steps or self.hparams.sample_steps,
            discretization=discretization or self.default_discretization(sampler),
            cond=self.conditioning(labels),
            generator=generator,
            **options,
        )
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
        if "label_dropout" not in h:  # trained before label dropout existed: the null class never was
            self.hparams.label_dropout = 0.0
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
        u = torch.rand(images.shape[0], device=self.device)
        if self.num_classes and self.hparams.label_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.hparams.label_dropout
            labels = torch.where(drop, -1, labels)
        loss = self.loss(self.net, images, labels, u, torch.randn_like(images)).mean()
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
        loss = self.loss(
            self.ema.module, images, labels, torch.stack(u).to(self.device), torch.stack(noise).to(images.device)
        )
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
