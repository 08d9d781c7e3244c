"""Slimmable UNet / PyramidUNet (DDSM's step-aware networks): width 1 is the plain network bit for bit, every
sub-width is a plain smaller network built from the per-source weight slices, and FLOPs fall with the width."""

from __future__ import annotations

import re

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pyramid_dm.nets import PyramidUNet, UNet
from pyramid_dm.nets.slimmable import use_width

WIDTHS = [1.0, 0.75, 0.5, 0.25]
BODY = dict(base_channels=32, channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(8,), norm_groups=8)


def decoder_sources(widths=(32, 64), blocks=2) -> list[list[tuple[int, int]]]:
    """(channels of h, channels of the skip) entering each decoder block, from DDPM's UNet layout (written out)."""
    skips, ch = [widths[0]], widths[0]
    for i, w in enumerate(widths):
        skips += [w] * blocks
        ch = w
        if i < len(widths) - 1:
            skips.append(w)
    table = []
    for w in reversed(widths):
        level = []
        for _ in range(blocks + 1):
            level.append((ch, skips.pop()))
            ch = w
        table.append(level)
    return table


def sources(name: str, size: int, dim: str) -> list[tuple[int, bool]]:
    """The sources (channels, slimmable) of a layer's input or output, from the architecture, not the layers."""
    m = re.search(r"up\.(\d+)\.res\.(\d+)\.(norm1|conv1|skip|spade\.conv)$", name)
    if m:
        h, skip = decoder_sources()[int(m[1])][int(m[2])]
        if m[3] == "spade.conv":
            return [(size, False)] if dim == "in" else [(h, True), (skip, True)] * 2
        if dim == "in" or m[3] == "norm1":  # a norm's affine runs over its input's channels
            return [(h, True), (skip, True)]
    if dim == "out" and name.endswith("qkv"):
        return [(size // 3, True)] * 3
    if name.endswith("spade.conv"):
        return [(size, dim == "out")] if dim == "in" else [(size // 2, True)] * 2
    full_in = ("conv_in", "heads_in", "time_mlp.0", "aug_mlp.0")
    if (dim == "in" and any(k in name for k in full_in)) or (
        dim == "out" and ("conv_out" in name or "heads_out" in name)
    ):
        return [(size, False)]
    return [(size, True)]


def keep(parts, width: float) -> torch.Tensor:
    """Indices each source keeps: its first round8(c w) channels (image channels whole)."""
    idx, start = [], 0
    for c, slimmable in parts:
        n = min(c, max(8, int(c * width / 8 + 0.5) * 8)) if slimmable else c
        idx.append(torch.arange(start, start + n))
        start += c
    return torch.cat(idx)


def sliced_state(full: torch.nn.Module, small: torch.nn.Module, width: float) -> dict:
    """The full network's weights cut to ``small``'s shapes, each concatenated input sliced per source."""
    out = {}
    for name, p in full.state_dict().items():
        layer, _, kind = name.rpartition(".")
        want = small.state_dict()[name].shape
        if layer.endswith(("class_emb", "level_emb")):
            p = p[:, : want[1]]
        elif layer.startswith("spade_in"):  # the context's SPADE features are not slimmed
            pass
        else:
            p = p[keep(sources(layer, p.shape[0], "out"), width)]
            if p.ndim > 1:
                p = p[:, keep(sources(layer, p.shape[1], "in"), width)]
        assert p.shape == want, name
        out[name] = p
    return out


def test_full_width_is_the_plain_network_bit_for_bit():
    torch.manual_seed(0)
    plain = UNet(1, image_size=16, num_classes=10, **BODY)
    torch.manual_seed(0)
    supernet = UNet(1, image_size=16, num_classes=10, width_multipliers=WIDTHS, **BODY)
    x, t, y = torch.randn(3, 1, 16, 16), torch.rand(3), torch.tensor([0, 4, 10])
    assert torch.equal(plain(x, t, y), supernet(x, t, y, width=1.0))
    assert torch.equal(plain(x, t, y), supernet(x, t, y))


@pytest.mark.parametrize("width", [0.75, 0.5, 0.25])
def test_every_sub_width_is_a_plain_small_network_of_the_sliced_weights(width):
    torch.manual_seed(1)
    full = UNet(1, image_size=16, num_classes=10, width_multipliers=WIDTHS, **BODY)
    for p in full.parameters():  # non-trivial norms and biases, so a wrong slice shows
        torch.nn.init.normal_(p, std=0.1)
    small = UNet(
        1,
        image_size=16,
        num_classes=10,
        time_channels=32,
        **{**BODY, "base_channels": int(32 * width), "norm_groups": int(8 * width)},
    )
    small.load_state_dict(sliced_state(full, small, width))
    x, t, y = torch.randn(3, 1, 16, 16), torch.rand(3), torch.tensor([0, 4, 10])
    torch.testing.assert_close(full(x, t, y, width=width), small(x, t, y), rtol=1e-5, atol=1e-5)


def test_pyramid_sub_width_is_a_plain_small_network_and_keeps_heads_full():
    torch.manual_seed(2)
    kw = dict(level_channels=[1, 1], context_channels=[0, 1], level_sizes=[8, 16], num_classes=10, spade=True)
    full = PyramidUNet(**kw, width_multipliers=WIDTHS, **BODY)
    for p in full.parameters():
        torch.nn.init.normal_(p, std=0.1)
    small = PyramidUNet(**kw, time_channels=32, **{**BODY, "base_channels": 16, "norm_groups": 4})
    small.load_state_dict(sliced_state(full, small, 0.5))
    x, ctx, t, y = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([1, 2])
    args = dict(level=1, context=ctx, aug_t=torch.rand(2))
    torch.testing.assert_close(full(x, t, y, width=0.5, **args), small(x, t, y, **args), rtol=1e-5, atol=1e-5)
    assert full(x, t, y, width=0.25, **args).shape == x.shape


def test_flops_fall_with_the_width_as_flop_counter_counts_them():
    net = UNet(1, image_size=16, width_multipliers=WIDTHS, **BODY)
    x, t = torch.randn(1, 1, 16, 16), torch.rand(1)
    flops = []
    for w in WIDTHS:
        with FlopCounterMode(display=False) as counter, use_width(w):
            net(x, t)
        flops.append(counter.get_total_flops())
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == 4
    assert 0.2 < flops[2] / flops[0] < 0.3  # convolutions scale with w^2
    assert flops[3] / flops[0] < 0.1


def test_widths_are_checked():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        UNet(1, image_size=16, width_multipliers=[1.0, 1.5], **BODY)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        UNet(1, image_size=16, width_multipliers=[0.0, 1.0], **BODY)
    net = UNet(1, image_size=16, width_multipliers=[1.0, 0.5], **BODY)
    with pytest.raises(ValueError, match="0.25 is not one of"):
        net(torch.randn(1, 1, 16, 16), torch.rand(1), width=0.25)
