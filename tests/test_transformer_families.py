"""Every family takes a transformer body by its options alone: latent diffusion in a KL autoencoder's latent, a
multi-scale autoencoder's pyramid, Pyramidal Flow Matching in pixel space and over a latent pyramid; each trains a
step in fp32 and under bf16 autocast, keeps an EMA copy, and samples class-conditionally with classifier-free
guidance (the engine alone; the Trainer path: tests/test_dit.py, tests/test_transformer_training.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import ROOT

from pyramid_dm.engine.wrappers import Count, Guidance
from pyramid_dm.models import LatentDiffusion, PyramidDiffusion

LEGACY = ROOT / "tests" / "fixtures" / "legacy"
BODIES = {
    "dit": {"hidden_size": 32, "depth": 1, "num_heads": 2, "patch_size": 1},
    "hdit": {"widths": [32, 64], "depths": [1, 1], "window": 2, "head_dim": 16, "mapping_width": 32, "patch_size": 1},
}
FLOW = {"schedule": "flow", "num_timesteps": 0, "prediction": "flow", "layout": "pyramid_flow"}
FAMILIES = {
    "latent": lambda **kw: LatentDiffusion(8, 1, autoencoder_ckpt=str(LEGACY / "ae_kl.ckpt"), **kw),
    "msvq_pyramid": lambda **kw: PyramidDiffusion(
        8, 1, first_stage="autoencoder", autoencoder_ckpt=str(LEGACY / "ae_msvq.ckpt"), **kw
    ),
    "pixel_pyramid_flow": lambda **kw: PyramidDiffusion(8, 1, resolutions=[4, 8], **FLOW, **kw),
    "latent_pyramid_flow": lambda **kw: PyramidDiffusion(
        8,
        1,
        first_stage="latent_pyramid",
        autoencoder_ckpt=str(LEGACY / "ae_kl.ckpt"),
        resolutions=[2, 4],
        **FLOW,
        **kw,
    ),  # fmt: skip
}


@pytest.mark.parametrize("network", sorted(BODIES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_and_guides_a_transformer_body(family, network):
    torch.manual_seed(0)
    model = FAMILIES[family](network=network, unet=BODIES[network], num_classes=10, ema_decay=0.9)
    engine = model.engine
    assert type(engine.net).__name__ == {"dit": "DiT", "hdit": "HourglassDiT"}[network]
    images, labels = torch.rand(8, 1, 8, 8) * 2 - 1, torch.arange(8)
    if family != "pixel_pyramid_flow":
        model.fit_latent_scale(images)
    loss, _ = engine.training_loss(images, labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in engine.net.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, _ = engine.training_loss(images, labels)
    assert torch.isfinite(bf16)
    count = Count()
    out = model.sample(4, "euler", 3, labels=torch.tensor([0, 1, 2, 3]), wrappers=[Guidance(2.0), count], ema=True)
    assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()
    assert count.nfe == [6] * engine.num_levels  # 3 steps, each the conditional and the null branch
