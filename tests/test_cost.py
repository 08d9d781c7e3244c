"""The cost side of evaluation: FLOPs counted by torch's flop counter (against an analytic count, and per sample =
NFE x per call + decoder), the measured sampling cost, and samples that depend only on the seed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyramid_dm.eval import count_flops
from pyramid_dm.eval.sampling import per_sample_flops, sample_with_cost
from pyramid_dm.models import PixelDiffusion


def test_flop_counter_matches_an_analytic_count():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
    x = torch.randn(4, 3, 16, 16)
    conv = 2 * (8 * 16 * 16) * (3 * 3 * 3)  # 2 FLOPs per multiply-add, per output element
    linear = 2 * (8 * 16 * 16) * 10
    assert count_flops(lambda: net(x)) == 4 * (conv + linear)


def tiny_model() -> PixelDiffusion:
    torch.manual_seed(0)
    unet = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4]}
    return PixelDiffusion(image_size=8, channels=1, num_classes=10, unet=unet).eval()


@pytest.mark.parametrize("sampler,steps", [("ddim", 5), ("ddpm", 3)])
def test_flops_per_sample_equal_nfe_times_flops_per_call(sampler, steps):
    model = tiny_model()
    (per_call,), decoder = per_sample_flops(model.for_sampling())  # one level: one per-call count
    total = count_flops(lambda: model.sample(1, sampler, steps, labels=torch.tensor([3])))
    images, cost = sample_with_cost(model.for_sampling(), sampler, steps, num_samples=6, batch_size=4, progress=False)
    assert total == steps * per_call + decoder and cost.nfe == steps
    assert cost.gflops_per_sample * 1e9 == pytest.approx(total)
    assert images.shape == (6, 1, 8, 8) and cost.images_per_s > 0 and cost.peak_mem_mb > 0
    assert cost.params == sum(p.numel() for p in model.net.parameters()) and cost.energy_j_per_sample is None
    levels = (images + 1) * 127.5  # quantized to the 256 levels of real PNGs
    assert torch.allclose(levels, levels.round(), atol=1e-4) and len(levels.unique()) > 10


def test_same_seed_same_samples_whatever_the_batch_split():
    model = tiny_model().for_sampling()
    a, _ = sample_with_cost(model, "ddim", 4, num_samples=8, batch_size=4, seed=1, progress=False)
    b, _ = sample_with_cost(model, "ddim", 4, num_samples=8, batch_size=4, seed=1, progress=False)
    c, _ = sample_with_cost(model, "ddim", 4, num_samples=8, batch_size=4, seed=2, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_network_whose_bottleneck_is_one_pixel_is_costed():
    """GroupNorm cannot normalise a single 1x1 sample when channels == groups: the FLOP count of one sample must not
    need one (issue 26: evaluate crashed on a model fit trains)."""
    torch.manual_seed(0)
    unet = dict(base_channels=8, channel_mult=[1, 1, 1, 1], num_res_blocks=1, attention_resolutions=[], norm_groups=8)
    model = PixelDiffusion(8, 1, unet=unet).eval()
    (per_call,), _ = per_sample_flops(model.for_sampling())
    _, cost = sample_with_cost(model.for_sampling(), "ddim", 3, num_samples=3, batch_size=3, progress=False)
    assert per_call > 0 and cost.gflops_per_sample * 1e9 == pytest.approx(3 * per_call)
