"""The networks a diffusion model can name (``model.network``): :data:`NETWORKS` maps the name to a builder
``(spec, **options) -> nn.Module``; ``options`` are ``model.unet`` (the network's own keyword arguments, plus
``width_multipliers`` for a step-aware supernet).

A network knows nothing about diffusion: it is called as ``net(x, c_noise, class_labels=..., context=...,
aug_t=..., level=...)`` (the last three for a pyramid's levels only) and returns a tensor shaped like ``x``; the
preconditioning that wraps it is :class:`~pyramid_dm.diffusion.Denoiser`'s. :class:`NetSpec` is what the model asks
of it, read from the first stage and the layout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..registry import Registry
from .dit import DiT
from .hdit import HourglassDiT
from .pyramid_unet import PyramidUNet
from .unet import UNet


@dataclass(frozen=True)
class NetSpec:
    """What a network is built for: each level's channels and grid size (coarse first; one level for pixel and
    latent models), each level's context channels (0: none), the classes (None: unconditional; the null class is
    ``num_classes``), and for a pyramid (``pyramid``: per-level inputs, ``level=`` at call) its body options."""

    level_channels: tuple[int, ...]
    level_sizes: tuple[int, ...]
    context_channels: tuple[int, ...]
    num_classes: int | None
    pyramid: bool = False
    shared_body: bool = True
    spade: bool = False


def unet(spec: NetSpec, **options) -> nn.Module:
    """:class:`UNet` for one level, :class:`PyramidUNet` (one body, per-level heads) for a pyramid."""
    if not spec.pyramid:
        c, size = spec.level_channels[0], spec.level_sizes[0]
        return UNet(in_channels=c, image_size=size, num_classes=spec.num_classes, **options)
    return PyramidUNet(
        level_channels=list(spec.level_channels),
        context_channels=list(spec.context_channels),
        level_sizes=list(spec.level_sizes),
        num_classes=spec.num_classes,
        shared_body=spec.shared_body,
        spade=spec.spade,
        **options,
    )


def _transformer(cls: type[nn.Module], name: str):
    def build(spec: NetSpec, **options) -> nn.Module:
        if spec.spade or not spec.shared_body:
            raise ValueError(f"{name}: model.spade and model.shared_body false are UNet options; it has one body")
        return cls(
            level_channels=list(spec.level_channels),
            level_sizes=list(spec.level_sizes),
            context_channels=list(spec.context_channels),
            num_classes=spec.num_classes,
            **options,
        )

    build.__doc__ = (
        f":class:`{cls.__name__}`: one transformer body; a pyramid's levels each get a patch embedding (context "
        "channels included), a patch size and an output layer."
    )
    return build


dit = _transformer(DiT, "dit")
hdit = _transformer(HourglassDiT, "hdit")


NETWORKS: Registry[Callable[..., nn.Module]] = Registry("network")
NETWORKS.register("unet", unet)
NETWORKS.register("dit", dit)
NETWORKS.register("hdit", hdit)
