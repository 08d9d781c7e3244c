"""The hourglass diffusion transformer (pyramid_dm/nets/hdit.py): each attention kind against a written-out
reference (k-diffusion's image_transformer_v2 does not install here: it needs torchvision), zero at initialisation,
cost about 4x per doubling of the side, and clear errors for sizes that do not tile."""

from __future__ import annotations

import math

import pytest
import torch

from pyramid_dm.nets.hdit import Attention, HourglassDiT, _merge, _split


def randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)


def rope_by_hand(x, rows, cols, freqs):
    """RoPE written out per token and pair: dims [0, n) pair with [n, 2n) at row angles, [2n, 3n) with [3n, 4n)
    at column angles; the rest untouched."""
    out = x.clone()
    n = len(freqs)
    for t in range(x.shape[-2]):
        for i in range(n):
            for base, pos in ((0, rows[t]), (2 * n, cols[t])):
                a, b = x[..., t, base + i], x[..., t, base + n + i]
                angle = pos * freqs[i]
                out[..., t, base + i] = a * math.cos(angle) - b * math.sin(angle)
                out[..., t, base + n + i] = a * math.sin(angle) + b * math.cos(angle)
    return out


def attention_by_hand(layer: Attention, x, cond):
    """Each token attends to the tokens of its window (after a cyclic shift of half a window, to those that were
    its neighbours before the shift), or to all tokens: softmax(q k^T / sqrt(d)) v over explicit index sets."""
    b, h, w, d = x.shape
    heads, hd = layer.heads, layer.head_dim
    q, k, v = layer.qkv(layer.norm(x, cond)).chunk(3, dim=-1)
    rows = (torch.arange(h, dtype=torch.float64) * 2 + 1) / h - 1
    cols = (torch.arange(w, dtype=torch.float64) * 2 + 1) / w - 1
    r_of = [rows[i // w].item() for i in range(h * w)]
    c_of = [cols[i % w].item() for i in range(h * w)]
    split = [t.reshape(b, h * w, heads, hd).transpose(1, 2) for t in (q, k, v)]
    q, k = (rope_by_hand(t, r_of, c_of, layer.freqs.tolist()) for t in split[:2])
    v = split[2]
    ws, s = layer.window, (layer.window // 2 if layer.shift else 0)

    def group(i: int):  # (window id, region id) of token i in the shifted frame
        r, c = (i // w - s) % h, (i % w - s) % w
        region = (min(2, (r >= h - ws) + (r >= h - s) if s else 0), min(2, (c >= w - ws) + (c >= w - s) if s else 0))
        return (r // ws, c // ws), region

    out = torch.zeros_like(q)
    for i in range(h * w):
        if ws is None or layer.window is None:
            keys = list(range(h * w))
        else:
            keys = [j for j in range(h * w) if group(j) == group(i)]
        scores = (q[:, :, i : i + 1] @ k[:, :, keys].transpose(-1, -2)) / math.sqrt(hd)
        out[:, :, i] = (scores.softmax(-1) @ v[:, :, keys])[:, :, 0]
    return x + layer.out(out.transpose(1, 2).reshape(b, h, w, d))


@pytest.mark.parametrize(("window", "shift"), [(None, False), (4, False), (4, True)])
def test_attention_equals_the_written_out_reference(window, shift):
    torch.manual_seed(0)
    layer = Attention(32, 16, cond_dim=8, window=window, shift=shift).double()
    randomise(layer)
    x, cond = torch.randn(2, 8, 8, 32, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(x, cond), attention_by_hand(layer, x, cond), rtol=1e-5, atol=1e-5)


def test_merge_and_split_are_inverse_token_regroupings():
    x = torch.randn(2, 8, 6, 5)
    merged = _merge(x)
    assert merged.shape == (2, 4, 3, 20) and torch.equal(merged[0, 1, 2, :5], x[0, 2, 4])  # 2x2 block, row-major
    assert torch.equal(_split(merged), x)


def small(size: int = 32, **kw) -> HourglassDiT:
    args = {"level_channels": [3], "level_sizes": [size], "num_classes": 10, "patch_size": 4, "widths": [64, 128, 256],
            "depths": [2, 2, 2], "window": 4, "head_dim": 32, "mapping_width": 64} | kw  # fmt: skip
    return HourglassDiT(**args)


def test_the_hourglass_outputs_zero_at_initialisation_and_every_part_learns():
    net = small()
    x, t, labels = torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([1, 10])
    assert net(x, t, labels).abs().max() == 0
    randomise(net)
    (net(x, t, labels) - x).pow(2).mean().backward()
    assert not [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]


def test_the_hourglass_costs_about_4x_per_doubling_of_the_side():
    from pyramid_dm.flops import training_flops

    flops = [training_flops(lambda s=s: small(s), (3, s, s), 1, backward=False) for s in (32, 64, 128)]
    ratios = [b / a for a, b in zip(flops, flops[1:])]
    assert all(3.6 <= r <= 4.4 for r in ratios), ratios  # local attention above, 8x8 global tokens at most below


def test_a_pyramid_hourglass_takes_each_levels_context_and_patch():
    net = HourglassDiT([3, 3], [16, 32], context_channels=[0, 3], patch_size=[2, 4], widths=[32, 64], depths=[1, 1],
                       window=4, head_dim=16, mapping_width=32)  # fmt: skip
    randomise(net)
    ctx = torch.randn(2, 3, 32, 32)
    assert net(torch.randn(2, 3, 16, 16), torch.rand(2), level=0).shape == (2, 3, 16, 16)
    fine = net(torch.randn(2, 3, 32, 32), torch.rand(2), level=1, context=ctx, aug_t=torch.rand(2))
    assert fine.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="level 1 takes a context of 3 channels, got 0"):
        net(torch.randn(2, 3, 32, 32), torch.rand(2), level=1)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"patch_size": 3}, "patch_size 3 does not divide level 0's side 32"),
        ({"window": 16}, "fewer than the window 16"),
        ({"window": 3}, "the window 3 does not tile stage 0's 8x8 tokens"),
        ({"head_dim": 48}, "width 64 does not split into heads of 48"),
        ({"depths": [2, 2]}, "one depth per width"),
        ({"level_sizes": [36]}, "do not halve 2 times into whole stages"),
    ],
)
def test_sizes_that_do_not_tile_are_clear_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        small(**kw)


def sliced_copy(net: HourglassDiT, width: float) -> HourglassDiT:
    """A plain hourglass (no width_multipliers) holding ``net``'s weights sliced by hand to ``width``: every attention
    layer keeps its first round(heads w) heads of q, k and v (and those columns of the output projection), every
    GEGLU its first slim(hidden w) units of the value half and of the gate half (and those columns of ``down``)."""
    import copy

    from pyramid_dm.nets.hdit import FeedForward
    from pyramid_dm.nets.slimmable import slim_channels

    def linear(weight: torch.Tensor) -> torch.nn.Linear:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight = torch.nn.Parameter(weight.clone())
        return layer

    out = copy.deepcopy(net)
    out.width_multipliers = None
    for module in out.modules():
        if isinstance(module, Attention):
            heads = round(module.heads * width)
            kept, dim = heads * module.head_dim, module.qkv.in_features
            module.qkv = linear(module.qkv.weight.view(3, dim, dim)[:, :kept].reshape(3 * kept, dim))
            module.out = linear(module.out.weight[:, :kept])
            module.heads = heads
        elif isinstance(module, FeedForward):
            hidden = module.down.in_features
            k = slim_channels(hidden, width)
            module.up = linear(torch.cat([module.up.weight[:k], module.up.weight[hidden : hidden + k]]))
            module.down = linear(module.down.weight[:, :k])
    return out


@pytest.mark.parametrize("width", [0.5, 0.25])
def test_an_hourglass_sub_width_is_a_plain_smaller_hourglass_of_the_sliced_weights(width):
    sizes = {"head_dim": 8, "widths": [32, 64], "depths": [2, 2], "mlp_ratio": 2.0}
    torch.manual_seed(0)
    full = small(**sizes, width_multipliers=[1.0, 0.5, 0.25])
    randomise(full)
    x, t, labels = torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([3, 10])
    reference = sliced_copy(full, width)
    assert sum(p.numel() for p in reference.parameters()) < sum(p.numel() for p in full.parameters())
    assert torch.equal(full(x, t, labels, width=width), reference(x, t, labels))
    plain = small(**sizes)
    plain.load_state_dict(full.state_dict())
    assert torch.equal(full(x, t, labels, width=1.0), plain(x, t, labels))  # width 1: the plain network, bit for bit
    assert not torch.allclose(full(x, t, labels, width=width), plain(x, t, labels))
    with pytest.raises(ValueError, match="hdit: width 0.1 leaves no whole head of num_heads 4"):
        small(**sizes, width_multipliers=[1.0, 0.1])
    with pytest.raises(ValueError, match="not slimmable"):
        plain(x, t, labels, width=0.5)
