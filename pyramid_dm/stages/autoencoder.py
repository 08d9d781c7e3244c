"""Latent and multi-scale first stages: a trained (multi-scale) autoencoder, frozen, loaded from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import UserError
from ..nets.autoencoder import build_autoencoder
from .base import FirstStage


def load_autoencoder_checkpoint(path: str | Path, key: str = "autoencoder_ckpt") -> dict:
    """The hyperparameters and network weights of an :class:`~pyramid_dm.models.AutoencoderModel` checkpoint, or a
    clear error naming ``key`` and the file if it is missing, unreadable or holds something else."""
    if not path:
        raise UserError(f"model.{key} is not set: name the autoencoder checkpoint (stage one) to diffuse in")
    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"model.{key} {str(p)!r} does not exist; train stage one first "
            "(python -m pyramid_dm fit --config configs/autoencoder/...yaml) and point at its checkpoints/last.ckpt"
        )
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"model.{key} {str(p)!r} is not a readable PyTorch checkpoint ({exc})") from exc
    stamp = ckpt.get("pyramid_dm", {}) if isinstance(ckpt, dict) else {}
    if stamp.get("family") != "autoencoder":
        what = stamp.get("class_path") or "not a pyramid_dm checkpoint"
        raise UserError(f"model.{key} {str(p)!r} is not an autoencoder checkpoint ({what}); name a stage-one run's")
    state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return {"hparams": dict(ckpt["hyper_parameters"]), "state_dict": state}


class AutoencoderStage(FirstStage):
    """A frozen :class:`~pyramid_dm.nets.MultiScaleAutoencoder`. ``encode`` gives the levels diffusion runs on (the
    posterior mean of a KL level, the continuous pre-quantisation output of a VQ level); ``decode`` re-quantises VQ
    levels and decodes (Frido's ``VQModelInterface``)."""

    def __init__(self, hparams: dict, state_dict: dict | None = None):
        super().__init__()
        self.net = build_autoencoder(hparams)
        if state_dict is not None:
            self.net.load_state_dict(state_dict)
        self.net.requires_grad_(False)
        self.level_shapes = [(c, s, s) for c, s in zip(self.net.latent_channels, self.net.level_sizes)]
        self.image_shape = (hparams["channels"], hparams["image_size"], hparams["image_size"])

    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        latents, _, _, _ = self.net.encode(images, sample=False)
        return latents

    def decode(self, levels: list[Tensor]) -> Tensor:
        return self.net.decode(self.net.quantize(levels))
