import math

import pytest
import torch

from pyramid_dm.diffusion import PREDICTIONS, Denoiser, build_schedule, coefficients, loss_weight, network_target


def _noisy(prediction, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(64, 3, 4, 4, generator=g), torch.randn(64, 3, 4, 4, generator=g)
    sigma = torch.exp(torch.randn(64, generator=g, dtype=torch.float64) * 1.5)
    return x0, eps, sigma


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_a_network_that_outputs_its_target_denoises_exactly(prediction):
    """D(x0 + sigma eps; sigma) = x0 when F returns F*: the preconditioning and the target are consistent."""
    x0, eps, sigma = _noisy(prediction)
    tgt = network_target(prediction, x0.double(), eps.double(), sigma)
    den = Denoiser(lambda x_in, level: tgt, build_schedule("cosine", None), prediction)
    x = x0.double() + sigma.view(-1, 1, 1, 1) * eps.double()
    assert torch.allclose(den(x, sigma), x0.double(), atol=1e-9)


def test_targets_are_the_textbook_eps_x0_v():
    x0, eps, sigma = _noisy("v")
    alpha, sig_vp = 1 / (1 + sigma**2).sqrt(), sigma / (1 + sigma**2).sqrt()
    a, s = alpha.view(-1, 1, 1, 1), sig_vp.view(-1, 1, 1, 1)
    assert torch.allclose(network_target("eps", x0, eps, sigma), eps, atol=1e-6)
    assert torch.allclose(network_target("x0", x0, eps, sigma), x0, atol=1e-6)
    assert torch.allclose(network_target("v", x0, eps, sigma), (a * eps - s * x0).float(), atol=1e-5)


def test_edm_preconditioning_matches_karras_table_1():
    sigma = torch.tensor([0.002, 0.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in = coefficients("edm", sigma, 0.5)
    assert torch.allclose(c_skip, 0.25 / (sigma**2 + 0.25))
    assert torch.allclose(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    assert torch.allclose(c_in, 1 / (sigma**2 + 0.25).sqrt())
    seen = {}
    den = Denoiser(lambda x, level: seen.setdefault("level", level) * 0 + x, build_schedule("edm", None), "edm")
    den(torch.zeros(2, 1), torch.tensor(math.e**4, dtype=torch.float64))
    assert torch.allclose(seen["level"], torch.ones(2))  # c_noise = ln(sigma) / 4


def test_vp_networks_see_the_variance_preserving_input_and_time():
    s = build_schedule("linear", 1000)
    t = torch.tensor([0.3], dtype=torch.float64)
    sigma = s.sigma(t)
    seen = {}

    def net(x_in, level):
        seen.update(x_in=x_in, level=level)
        return torch.zeros_like(x_in)

    x0, eps = torch.randn(4, 2).double(), torch.randn(4, 2).double()
    Denoiser(net, s, "eps")(x0 + sigma * eps, sigma[0])
    alpha, sig_vp = s.vp_alpha_sigma(t)
    assert torch.allclose(seen["x_in"].double(), alpha * x0 + sig_vp * eps, atol=1e-6)
    assert torch.allclose(seen["level"], torch.full((4,), 0.3), atol=1e-6)


def test_weightings_on_the_x0_scale():
    sigma = torch.tensor([3.0, 1.0, 0.4, 0.1], dtype=torch.float64)
    snr = sigma**-2
    w_x0 = snr.clamp(max=5.0)
    # ||F - F*||^2 = ||D - x0||^2 / c_out^2: each weight divided by c_out^2 must give the same x0-scale weight
    for prediction in PREDICTIONS:
        c_out = coefficients(prediction, sigma)[1]
        assert torch.allclose(loss_weight(prediction, sigma, "min_snr") / c_out**2, w_x0)
        edm = (sigma**2 + 0.25) / (sigma * 0.5) ** 2
        assert torch.allclose(loss_weight(prediction, sigma, "edm") / c_out**2, edm)
    assert torch.allclose(loss_weight("eps", sigma, "min_snr"), w_x0 / snr)  # Hang et al.: min(SNR, g) / SNR
    assert torch.allclose(loss_weight("v", sigma, "min_snr"), w_x0 / (snr + 1))  # min(SNR, g) / (SNR + 1)
    assert torch.equal(loss_weight("eps", sigma), torch.ones(4, dtype=torch.float64))
    assert torch.allclose(loss_weight("edm", sigma, "edm"), torch.ones(4, dtype=torch.float64))
    # soft-min-SNR (HDiT): k-diffusion's weight on an EDM network's MSE, (sigma sd)^2 / (sigma^2 + sd^2)^2, with
    # gamma = 1 / sd^2; on the x0 scale a smooth min(SNR, gamma): below both, approaching each at its end
    sd = 0.5
    k_diffusion = (sigma * sd) ** 2 / (sigma**2 + sd**2) ** 2
    assert torch.allclose(loss_weight("edm", sigma, "soft_min_snr", gamma=1 / sd**2), k_diffusion)
    soft = loss_weight("eps", sigma, "soft_min_snr") / coefficients("eps", sigma)[1] ** 2
    assert (soft < w_x0).all() and soft[0] / snr[0] > 0.9 and soft[-1] / 5.0 > 0.9


def test_bad_names_and_pairs_are_clear_errors():
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        Denoiser(lambda x, t: x, build_schedule("cosine"), "score")
    with pytest.raises(ValueError, match="unknown loss weighting 'p2'"):
        loss_weight("eps", torch.ones(1), "p2")
    ztsnr = build_schedule("linear", 1000, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="'eps' cannot be used with the zero-terminal-SNR schedule"):
        Denoiser(lambda x, t: x, ztsnr, "eps")
    Denoiser(lambda x, t: x, ztsnr, "v")  # the pair Lin et al. recommend
