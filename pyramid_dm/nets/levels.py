"""What a body for several levels does per level (:class:`~.dit.DiT`, :class:`~.hdit.HourglassDiT`): read one
setting per level, embed the class and the level into the conditioning, and take a level's input with its context
as extra channels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class PerLevel(nn.Module):
    """Mixin: call :meth:`setup_levels` first in ``__init__``."""

    def setup_levels(
        self,
        name: str,
        level_channels: Sequence[int],
        level_sizes: Sequence[int],
        context_channels: Sequence[int] | None,
        patch_size: int | Sequence[int],
        num_classes: int | None,
        cond_dim: int,
    ) -> None:
        levels = len(level_channels)
        context = list(context_channels) if context_channels is not None else [0] * levels
        patches = [patch_size] * levels if isinstance(patch_size, int) else list(patch_size)
        if not len(level_sizes) == len(context) == len(patches) == levels:
            raise ValueError(f"{name}: level_channels, level_sizes, context_channels, patch_size: one entry per level")
        for lv, (size, p) in enumerate(zip(level_sizes, patches)):
            if p < 1 or size % p:
                raise ValueError(f"{name}: patch_size {p} does not divide level {lv}'s side {size}")
        self.net_name, self.num_classes = name, num_classes
        self.level_channels, self.context_channels, self.patches = list(level_channels), context, patches
        self.class_emb = nn.Embedding(num_classes + 1, cond_dim) if num_classes else None
        self.level_emb = nn.Embedding(levels, cond_dim) if levels > 1 else None

    def add_label_and_level(self, cond: Tensor, class_labels: Tensor | None, level: int) -> Tensor:
        """``cond`` plus the class embedding (the null class ``num_classes`` when no label is given) and the level's."""
        b = cond.shape[0]
        if self.class_emb is not None:
            if class_labels is None:
                class_labels = torch.full((b,), self.num_classes, device=cond.device, dtype=torch.long)
            cond = cond + self.class_emb(class_labels)
        if self.level_emb is not None:
            cond = cond + self.level_emb(torch.full((b,), level, device=cond.device, dtype=torch.long))
        return cond

    def level_input(self, x: Tensor, level: int, context: Tensor | None) -> Tensor:
        """Level ``level``'s square input, whole patches, with its context concatenated (checked against its own)."""
        name, want, got = self.net_name, self.context_channels[level], 0 if context is None else context.shape[1]
        if got != want:
            raise ValueError(f"{name}: level {level} takes a context of {want} channels, got {got}")
        h, w, p = x.shape[-2], x.shape[-1], self.patches[level]
        if h != w:
            raise ValueError(f"{name}: level {level}'s input is {h}x{w}; it takes square inputs")
        if h % p:
            raise ValueError(f"{name}: level {level}'s {h}x{w} input does not split into {p}x{p} patches")
        return torch.cat([x, context.to(x.dtype)], dim=1) if want else x
