"""Latent and multi-scale first stages: a trained (multi-scale) autoencoder, frozen, loaded from its checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoints import read_checkpoint, weights
from ..errors import UserError
from ..nets.autoencoder import build_autoencoder
from .base import FirstStage


def load_autoencoder_checkpoint(path: str | Path, key: str = "model.autoencoder_ckpt") -> dict:
    """The hyperparameters and network weights of an :class:`~pyramid_dm.models.AutoencoderModel` checkpoint, or a
    clear error naming ``key`` (the option that gave ``path``) and the file if it is missing, unreadable or holds
    something else."""
    hint = (
        ": name the autoencoder checkpoint (stage one) to diffuse in; train stage one first "
        "(python -m pyramid_dm fit --config configs/autoencoder/...yaml) and point at its checkpoints/last.ckpt"
    )
    ckpt = read_checkpoint(path, key, ("autoencoder",), "an autoencoder", hint)
    return {"hparams": dict(ckpt["hyper_parameters"]), "state_dict": weights(ckpt, "net.")}


def autoencoder_stage(
    path: str, channels: int, image_size: int, levels: str, recorded: dict | None = None
) -> AutoencoderStage:
    """The frozen autoencoder of checkpoint ``path`` (model.autoencoder_ckpt), checked against the data and the
    number of levels the model wants (``single`` or ``multi``). ``recorded``: the hyperparameters a diffusion
    checkpoint saved of it (:meth:`AutoencoderStage.record`); then the file is not read, and the weights come from the
    diffusion checkpoint, so a run still samples when its autoencoder's file has moved."""
    ae = {"hparams": dict(recorded["hparams"]), "state_dict": None} if recorded else load_autoencoder_checkpoint(path)
    ah = ae["hparams"]
    if (ah["channels"], ah["image_size"]) != (channels, image_size):
        raise UserError(
            f"model.autoencoder_ckpt {path!r} was trained on {ah['channels']}x{ah['image_size']}x{ah['image_size']} "
            f"images but the data gives {channels}x{image_size}x{image_size}"
        )
    n = int(ah["levels"])
    if levels == "single" and n != 1:
        raise UserError(
            f"model.autoencoder_ckpt {path!r} is a {n}-level multi-scale autoencoder; use "
            "pyramid_dm.models.PyramidDiffusion with first_stage: autoencoder for it"
        )
    if levels == "multi" and n < 2:
        raise UserError(
            f"model.autoencoder_ckpt {path!r} has a single latent level; pyramid diffusion needs a multi-scale "
            "autoencoder (levels >= 2), or use pyramid_dm.models.LatentDiffusion"
        )
    return AutoencoderStage(ah, ae["state_dict"])


class AutoencoderStage(FirstStage):
    """A frozen :class:`~pyramid_dm.nets.MultiScaleAutoencoder`. ``encode`` gives the levels diffusion runs on (the
    posterior mean of a KL level, the continuous pre-quantisation output of a VQ level); ``decode`` re-quantises VQ
    levels and decodes (Frido's ``VQModelInterface``)."""

    def __init__(self, hparams: dict, state_dict: dict | None = None):
        super().__init__()
        self.hparams = dict(hparams)
        self.net = build_autoencoder(hparams)
        if state_dict is not None:
            self.net.load_state_dict(state_dict)
        self.net.requires_grad_(False)
        self.eval()  # frozen from the start: a quantiser in training mode would encode (and update) differently
        self.level_shapes = [(c, s, s) for c, s in zip(self.net.latent_channels, self.net.level_sizes)]
        self.image_shape = (hparams["channels"], hparams["image_size"], hparams["image_size"])

    def record(self) -> dict:
        return {"hparams": self.hparams}

    def fingerprint(self) -> str:
        """SHA-256 of the autoencoder's weights (names, dtypes, shapes and values), whichever file they came from."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.net.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()

    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        latents, _, _, _ = self.net.encode(images, sample=False)
        return latents

    def decode(self, levels: list[Tensor]) -> Tensor:
        dtype = next(self.net.parameters()).dtype  # the levels in the autoencoder's own dtype (float64 in checks)
        return self.net.decode(self.net.quantize([z.to(dtype) for z in levels]))
