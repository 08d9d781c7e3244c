"""The (multi-scale) autoencoder networks that latent and pyramid diffusion run in: shapes, gradients, the
coarse-conditioned finer levels, the VQ codebook's EMA, dead-code restarts and straight-through gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyramid_dm.nets import MultiScaleAutoencoder, VectorQuantizer


# ---- autoencoders ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("regularizer", ["kl", "vq"])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_autoencoder_round_trip_shapes_and_gradients_reach_the_encoder(regularizer, levels):
    torch.manual_seed(0)
    ae = MultiScaleAutoencoder(1, 16, 16, (1, 2, 2), 1, levels, [3, 4, 5][:levels], regularizer, 32, norm_groups=8)
    x = torch.randn(2, 1, 16, 16)
    latents, codes, reg, stats = ae.encode(x)
    sizes = [4, 8, 16][:levels]  # coarse first: the coarsest resolutions are the levels
    assert [tuple(z.shape) for z in latents] == [(2, c, s, s) for c, s in zip([3, 4, 5], sizes)]
    assert [tuple(z.shape) for z in codes] == [tuple(z.shape) for z in latents]
    rec = ae.decode(codes)
    assert rec.shape == x.shape
    assert ae.decode(codes[:1]).shape == x.shape  # the coarse level alone decodes too
    (rec - x).abs().mean().add(reg).backward()
    # straight-through (VQ) or reparameterised (KL): the reconstruction loss reaches the first encoder conv
    assert ae.conv_in.weight.grad.abs().sum() > 0
    if regularizer == "vq":
        assert all(0 < float(s["perplexity"]) <= 32 and 0 < float(s["usage"]) <= 1 for s in stats)
        # a VQ level's code is its codebook entry: re-quantising the codes changes nothing (eval: no EMA update)
        _, codes, _, _ = ae.eval().encode(x)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ae.quantize(codes), codes))


def test_finer_levels_are_encoded_given_the_quantised_coarse_code():
    torch.manual_seed(0)
    ae = MultiScaleAutoencoder(1, 16, 16, (1, 2), 1, 2, 4, "vq", 16, norm_groups=8).eval()
    x = torch.randn(2, 1, 16, 16)
    _, codes, _, _ = ae.encode(x)
    feats = ae.trunk(x)
    fine_alone = ae.to_latent[1](feats[1])  # what the fine level would be without the coarse code
    merged = ae.to_latent[1](ae.merge[1](torch.cat([feats[1], F.interpolate(codes[0], size=16)], 1)))
    latents, _, _, _ = ae.encode(x)
    assert torch.allclose(latents[1], merged, atol=1e-6) and not torch.allclose(latents[1], fine_alone, atol=1e-3)


def test_ema_codebook_follows_the_data_and_dead_codes_restart():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, ema=True, decay=0.5, dead_after=3)
    target = torch.tensor([3.0, -2.0])
    z = target.view(1, 2, 1, 1).expand(16, 2, 4, 4) + 0.01 * torch.randn(16, 2, 4, 4)
    start = vq.codebook.detach().clone()
    vq(z)
    vq(z)
    used = vq.indices(z).unique()
    assert len(used) == 1  # the one code nearest to the data took it all ...
    assert (vq.codebook[used[0]] - target).norm() < 0.3  # ... and moved onto it (EMA of its assignments)
    idle = [i for i in range(8) if i != int(used[0])]
    assert torch.allclose(vq.codebook[idle], start[idle], atol=1e-3)  # the others sat idle for 2 < 3 updates
    vq(z)
    # after 3 idle updates they are restarted on encoder outputs, i.e. on the data, instead of staying dead
    assert (vq.codebook - target).norm(dim=1).max() < 0.3


def test_straight_through_codebook_gets_its_own_gradient():
    vq = VectorQuantizer(4, 2, ema=False)
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    zq, loss, _ = vq(z)
    (zq.sum() + loss).backward()
    assert z.grad is not None and vq.codebook.grad.abs().sum() > 0
