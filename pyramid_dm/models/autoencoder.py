"""Stage one: training the (multi-scale) KL or VQ autoencoder that latent and pyramid diffusion run in.

Loss (LDM ``LPIPSWithDiscriminator`` / taming ``VQLPIPSWithDiscriminator`` without LPIPS, whose weights we cannot
download): L1 or L2 reconstruction + kl_weight KL (KL) or the commitment/codebook loss (VQ), plus, from step
``disc_start`` on and if ``disc_weight`` > 0, a PatchGAN hinge loss weighted adaptively by
||grad rec|| / ||grad gan|| at the decoder's last layer (VQGAN, Esser et al. 2021, Eq. 7). Manual optimisation
(Lightning 2): one autoencoder and one discriminator step per batch.
"""

from __future__ import annotations

import copy
import random

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from .. import compat
from ..checkpoints import stamp
from ..errors import UserError
from ..flops import measure_flops
from ..nets import PatchDiscriminator
from ..nets.autoencoder import build_autoencoder
from .common import check_data_shape, data_batch_size


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(4.0 / mse)


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())


class AutoencoderModel(L.LightningModule):
    """Args:
    image_size, channels: linked from the data module (num_classes is ignored).
    base_channels, channel_mult, num_res_blocks, levels, latent_channels, regularizer, codebook_size, beta,
        ema_codebook, dead_code_after: the network, :class:`~pyramid_dm.nets.MultiScaleAutoencoder`.
    kl_weight: weight of the KL term (LDM uses 1e-6).
    reconstruction_loss: ``l1`` or ``l2``.
    coarse_decode_prob: probability of decoding a training batch from a random number of coarse levels only (the
        finer ones zeroed), so that the decoder also reconstructs from the coarse levels alone.
    disc_weight, disc_start, disc_channels, disc_layers: the PatchGAN (0 = no GAN).
    lr, betas: Adam for both (VQGAN: betas (0.5, 0.9)).
    """

    family = "autoencoder"
    flops_per_batch: int | None = None  # set in on_fit_start; None: no FLOPs in ThroughputMonitor (validate, test)

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int = 0,
        base_channels: int = 64,
        channel_mult: list[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        levels: int = 1,
        latent_channels: int | list[int] = 4,
        regularizer: str = "kl",
        codebook_size: int = 512,
        beta: float = 0.25,
        ema_codebook: bool = True,
        dead_code_after: int = 100,
        kl_weight: float = 1e-6,
        reconstruction_loss: str = "l1",
        coarse_decode_prob: float = 0.0,
        disc_weight: float = 0.0,
        disc_start: int = 10000,
        disc_channels: int = 64,
        disc_layers: int = 2,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.9),
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if reconstruction_loss not in ("l1", "l2"):
            raise UserError(f"model.reconstruction_loss {reconstruction_loss!r} is not one of ['l1', 'l2']")
        if not 0 <= coarse_decode_prob <= 1:
            raise UserError(f"model.coarse_decode_prob must lie in [0, 1], got {coarse_decode_prob}")
        try:
            self.net = build_autoencoder(self.hparams)
        except ValueError as e:
            raise UserError(f"model: {e}") from None
        self.disc = PatchDiscriminator(channels, disc_channels, disc_layers) if disc_weight > 0 else None
        self.val_rec, self.val_psnr = MeanMetric(), MeanMetric()
        self.latent_sq = torch.nn.ModuleList(MeanMetric() for _ in range(levels))

    @property
    def level_shapes(self) -> list[tuple[int, int, int]]:
        return [(c, s, s) for c, s in zip(self.net.latent_channels, self.net.level_sizes)]

    def reconstruct(self, images: Tensor, levels: int | None = None) -> Tensor:
        """Deterministic reconstruction (posterior mean) from the first ``levels`` levels (default: all)."""
        _, codes, _, _ = self.net.encode(images, sample=False)
        return self.net.decode(codes[: levels or self.net.levels])

    def _rec_loss(self, x: Tensor, y: Tensor) -> Tensor:
        return (x - y).abs().mean() if self.hparams.reconstruction_loss == "l1" else F.mse_loss(x, y)

    def _gan_active(self) -> bool:
        return self.disc is not None and self.global_step >= self.hparams.disc_start

    def training_step(self, batch, batch_idx: int) -> None:
        h = self.hparams
        images = batch[0]
        opts = self.optimizers()
        opt_ae, opt_d = opts if isinstance(opts, list) else (opts, None)
        gan = self._gan_active()  # decided once: the autoencoder's step below advances global_step
        _, codes, reg, stats = self.net.encode(images)
        keep = self.net.levels
        if self.net.levels > 1 and random.random() < h.coarse_decode_prob:
            keep = random.randint(1, self.net.levels - 1)
        rec = self.net.decode(codes[:keep])
        rec_loss = self._rec_loss(rec, images)
        loss = rec_loss + (h.kl_weight * reg if h.regularizer == "kl" else reg)
        if gan:
            g_loss = -self.disc(rec).mean()
            last = self.net.last_layer
            g_rec = torch.autograd.grad(rec_loss, last, retain_graph=True)[0]
            g_gan = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
            weight = (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4).detach() * h.disc_weight
            loss = loss + weight * g_loss
            self.log_dict({"train/g_loss": g_loss, "train/disc_adaptive_weight": weight})
        opt_ae.zero_grad()
        self.manual_backward(loss)
        opt_ae.step()
        if gan:
            d_loss = hinge_d_loss(self.disc(images), self.disc(rec.detach()))
            opt_d.zero_grad()
            self.manual_backward(d_loss)
            # the raw optimizer: a LightningOptimizer step would count as a second global step per batch
            compat.raw_optimizer(opt_d).step()
            self.log("train/d_loss", d_loss)
        logs = {"train/loss": loss, "train/rec_loss": rec_loss, "train/reg_loss": reg}
        if keep == self.net.levels:
            logs["train/psnr"] = psnr(rec.detach(), images).mean()
        for level, s in enumerate(stats):
            logs.update({f"train/{k}_level{level}": v for k, v in s.items()})
        self.log_dict(logs, prog_bar=False)
        self.log("train/rec", rec_loss, prog_bar=True, logger=False)

    def validation_step(self, batch, batch_idx: int) -> None:
        images = batch[0]
        latents, codes, _, _ = self.net.encode(images, sample=False)
        rec = self.net.decode(codes)
        self.val_rec.update(self._rec_loss(rec, images))
        self.val_psnr.update(psnr(rec, images))
        for level, z in enumerate(latents):
            self.latent_sq[level].update(z.float().pow(2).mean())

    def on_validation_epoch_end(self) -> None:
        logs = {"val/loss": self.val_rec.compute(), "val/psnr": self.val_psnr.compute()}
        for level, m in enumerate(self.latent_sq):
            logs[f"val/latent_rms_level{level}"] = m.compute().sqrt()
            m.reset()
        self.log_dict(logs, prog_bar=True, sync_dist=False)
        self.val_rec.reset()
        self.val_psnr.reset()

    def training_flops(self, batch_size: int) -> int:
        """FLOPs of the autoencoder's forward + backward on a batch (the discriminator not counted), counted by
        ``torch.utils.flop_counter`` on a one-image CPU copy (the quantiser has no meta-device kernels) x batch."""
        net = copy.deepcopy(self.net).cpu().eval()  # eval: no codebook update
        x = torch.zeros(1, *self.hparams_shape)
        return batch_size * measure_flops(net, lambda: net.decode(net.encode(x)[1]), loss_fn=lambda y: y.sum())

    @property
    def hparams_shape(self) -> tuple[int, int, int]:
        h = self.hparams
        return (h.channels, h.image_size, h.image_size)

    def on_fit_start(self) -> None:
        check_data_shape(self, "autoencoder")
        batch_size = data_batch_size(self)
        if batch_size:  # read by ThroughputMonitor for flops_per_sec and MFU
            self.flops_per_batch = self.training_flops(batch_size)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pyramid_dm"] = stamp("autoencoder", type(self))

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.Adam(self.net.parameters(), lr=h.lr, betas=tuple(h.betas))
        if self.disc is None:
            return opt
        return [opt, torch.optim.Adam(self.disc.parameters(), lr=h.lr, betas=tuple(h.betas))]
