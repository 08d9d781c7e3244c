"""Slimmable layers: one set of full-width weights run at a width multiplier w (slimmable networks, Yu et al. 2019;
the step-aware networks of DDSM, Yang et al. ICLR 2024).

At width w a layer uses a prefix slice of its weights: ``slim_channels(c, w)`` of each slimmable dimension (c w
rounded to a multiple of 8, at least 8, at most c). A dimension made of several sources (the decoder's
``cat([h, skip])``, attention's ``[q | k | v]``, SPADE's ``[gamma | beta]``) is sliced **per source**: the first
``slim(c_i)`` channels of every source i, not one prefix over the concatenation (DDSM's code does the latter, so its
skip channels meet weights trained for the h part). Image channels in and out are never slimmed. At w = 1 every layer
runs the plain ``torch.nn`` forward, so the full network is bit-for-bit the plain one.

GroupNorm keeps the number of channels per group fixed: a norm of C channels in G groups runs C' channels in
C' / (C / G) groups (DDSM keeps 32 groups, which leaves one channel per group at w = 0.25), or gcd(G, C') groups
where C / G does not divide C'.

The width is a context, read by every layer at call time: ``with use_width(0.5): net(x, t)`` (or the network's
``width=`` argument), never module attributes mutated by callers; contexts nest and are per thread (a compiled
network's are process-wide, see ``_TRACED_WIDTH``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import compat

_WIDTH: contextvars.ContextVar[float] = contextvars.ContextVar("pyramid_dm_width", default=1.0)

Parts = tuple[tuple[int, bool], ...]  # (full channels, slimmable) of each source, in order


def check_widths(widths: Sequence[float], what: str = "widths") -> list[float]:
    """The width multipliers, largest first; each must lie in (0, 1]."""
    out = sorted({float(w) for w in widths}, reverse=True)
    bad = [w for w in out if not 0 < w <= 1]
    if not out or bad:
        raise ValueError(f"{what} must be width multipliers in (0, 1], got {list(widths)}")
    return out


# TorchDynamo cannot trace a ContextVar, so every width read would split a compiled network into one graph per
# layer. A plain module global mirrors the innermost width: compiled code reads that one (Dynamo guards on its value,
# so a compiled supernet is recompiled once per width it runs at). The mirror is process-wide: a compiled network
# must not run at different widths in concurrent threads; eager code reads the per-thread context.
_TRACED_WIDTH = 1.0


@contextmanager
def use_width(width: float) -> Iterator[None]:
    """Run slimmable layers at ``width`` inside the block."""
    global _TRACED_WIDTH
    outer, _TRACED_WIDTH = _TRACED_WIDTH, float(width)
    token = None if torch.compiler.is_compiling() else _WIDTH.set(float(width))
    try:
        yield
    finally:
        _TRACED_WIDTH = outer
        if token is not None:
            _WIDTH.reset(token)


def current_width() -> float:
    return _TRACED_WIDTH if torch.compiler.is_compiling() else _WIDTH.get()


def at_width(widths: Sequence[float] | None, width: float | None):
    """The context running a network built for ``widths`` (its ``width_multipliers``; None: not slimmable) at
    ``width`` (None: the caller's, e.g. a step policy's ``use_width``), which must be one it was built for: a network
    built without ``width_multipliers`` runs at width 1 only, and refuses a narrower ambient width rather than
    silently running a slice of itself."""
    allowed = list(widths or [1.0])
    asked = current_width() if width is None else float(width)
    if asked != 1 and asked not in allowed:
        if widths is None and asked < 1:
            raise ValueError(
                f"width {asked} asked of a network that is not slimmable (built without width_multipliers): "
                "it runs at width 1 only"
            )
        raise ValueError(f"width {asked} is not one of this network's widths {allowed}")
    return contextlib.nullcontext() if width is None else use_width(width)


def heads_at(heads: int, width: float) -> int:
    """Attention heads kept at a width multiplier: ``heads * width`` rounded, whole heads only."""
    return heads if width >= 1 else int(heads * width + 0.5)


def check_heads(name: str, widths: Sequence[float] | None, heads: Sequence[int]) -> None:
    """Every width must leave at least one whole head of every attention layer's ``heads``."""
    for w in widths or []:
        for n in heads:
            if heads_at(n, w) < 1:
                raise ValueError(f"{name}: width {w} leaves no whole head of num_heads {n}")


def slim_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels of a slimmable dimension of ``channels`` at ``width``: rounded to a multiple of ``divisor``."""
    if width >= 1:
        return channels
    return min(channels, max(divisor, int(channels * width / divisor + 0.5) * divisor))


def spans(parts: Parts, width: float) -> list[tuple[int, int]]:
    """(start, stop) of the channels each source keeps at ``width``."""
    out, start = [], 0
    for size, slimmable in parts:
        out.append((start, start + (slim_channels(size, width) if slimmable else size)))
        start += size
    return out


def take(t: Tensor, dim: int, kept: list[tuple[int, int]]) -> Tensor:
    """The channels ``kept`` of ``t`` along ``dim`` (a view for a single source)."""
    if len(kept) == 1:
        return t.narrow(dim, kept[0][0], kept[0][1] - kept[0][0])
    return torch.cat([t.narrow(dim, a, b - a) for a, b in kept], dim)


def _parts(parts: Parts | None, channels: int, slimmable: bool) -> Parts:
    parts = tuple(parts) if parts is not None else ((channels, slimmable),)
    if sum(size for size, _ in parts) != channels:
        raise ValueError(f"parts {parts} do not add up to {channels} channels")
    return parts


class SlimConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose input and output channels follow the width (``in_parts``/``out_parts``: the sources)."""

    def __init__(self, cin, cout, kernel_size, *args, in_parts=None, out_parts=None, slim_in=True, slim_out=True, **kw):
        super().__init__(cin, cout, kernel_size, *args, **kw)
        self.in_parts, self.out_parts = _parts(in_parts, cin, slim_in), _parts(out_parts, cout, slim_out)

    def forward(self, x: Tensor) -> Tensor:
        w = current_width()
        if w >= 1:
            return super().forward(x)
        return compat.conv_forward(self, x, *_sliced(self, x.shape[1], w))


class SlimLinear(nn.Linear):
    """``nn.Linear`` whose features follow the width (``in_parts``/``out_parts``: the sources)."""

    def __init__(self, fin, fout, bias=True, *, in_parts=None, out_parts=None, slim_in=True, slim_out=True):
        super().__init__(fin, fout, bias)
        self.in_parts, self.out_parts = _parts(in_parts, fin, slim_in), _parts(out_parts, fout, slim_out)

    def forward(self, x: Tensor) -> Tensor:
        w = current_width()
        if w >= 1:
            return super().forward(x)
        return F.linear(x, *_sliced(self, x.shape[-1], w))


class SlimGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over slimmed channels (per source), with a fixed number of channels per group."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-6, *, parts: Parts | None = None):
        super().__init__(num_groups, num_channels, eps=eps)
        self.parts = _parts(parts, num_channels, True)

    def groups_at(self, channels: int) -> int:
        per_group = self.num_channels // self.num_groups
        return channels // per_group if channels % per_group == 0 else math.gcd(self.num_groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        w = current_width()
        if w >= 1:
            return super().forward(x)
        kept = spans(self.parts, w)
        _check_input(self, x.shape[1], sum(b - a for a, b in kept), w)
        return F.group_norm(
            x, self.groups_at(x.shape[1]), take(self.weight, 0, kept), take(self.bias, 0, kept), self.eps
        )


class SlimEmbedding(nn.Embedding):
    """``nn.Embedding`` whose embedding dimension follows the width."""

    def forward(self, x: Tensor) -> Tensor:
        w = current_width()
        if w >= 1:
            return super().forward(x)
        return F.embedding(x, self.weight[:, : slim_channels(self.embedding_dim, w)])


def _sliced(layer: SlimConv2d | SlimLinear, channels_in: int, width: float) -> tuple[Tensor, Tensor | None]:
    """(weight, bias) of a conv or linear layer at ``width``, for an input of ``channels_in`` channels."""
    outs = spans(layer.out_parts, width)
    weight = take(take(layer.weight, 0, outs), 1, spans(layer.in_parts, width))
    _check_input(layer, channels_in, weight.shape[1], width)
    return weight, None if layer.bias is None else take(layer.bias, 0, outs)


def _check_input(layer: nn.Module, got: int, want: int, width: float) -> None:
    if got != want:
        raise ValueError(f"{type(layer).__name__} at width {width}: the input has {got} channels, the slice {want}")


def group_norm(channels: int, groups: int = 32, parts: Parts | None = None) -> SlimGroupNorm:
    """GroupNorm of ``channels`` in gcd(groups, channels) groups (eps 1e-6), slimmable."""
    return SlimGroupNorm(math.gcd(groups, channels), channels, eps=1e-6, parts=parts)


class AtWidth(nn.Module):
    """``net`` run at a fixed ``width`` whatever the caller's context (e.g. a supernet's full width as the teacher of
    its sub-widths)."""

    def __init__(self, net: nn.Module, width: float):
        super().__init__()
        self.net, self.width = net, float(width)

    def forward(self, *args, **kwargs):
        with use_width(self.width):
            return self.net(*args, **kwargs)
