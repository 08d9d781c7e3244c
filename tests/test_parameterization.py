import pytest
import torch

from pyramid_dm.diffusion import PREDICTIONS, PredictionDenoiser, build_schedule, loss_weight, target, to_eps, to_x0


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_conversions_round_trip(prediction):
    g = torch.Generator().manual_seed(0)
    s = build_schedule("cosine", 1000)
    x0, eps = torch.randn(64, 3, 4, 4, generator=g), torch.randn(64, 3, 4, 4, generator=g)
    t = s.sample_t(64, generator=g).clamp(max=0.98)  # away from alpha = 0, where x0 from eps is ill-conditioned
    alpha, sigma = s.alpha_sigma(t)
    xt = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
    out = target(prediction, x0, eps, alpha, sigma)
    assert torch.allclose(to_x0(prediction, out, xt, alpha, sigma), x0, atol=2e-4)
    assert torch.allclose(to_eps(prediction, out, xt, alpha, sigma), eps, atol=2e-4)


def test_v_is_alpha_eps_minus_sigma_x0():
    x0, eps = torch.randn(8, 2), torch.randn(8, 2)
    alpha, sigma = torch.full((8,), 0.6), torch.full((8,), 0.8)
    assert torch.allclose(target("v", x0, eps, alpha, sigma), 0.6 * eps - 0.8 * x0)


def test_min_snr_weights_equal_min_snr_gamma_on_x0_scale():
    snr = torch.tensor([0.1, 1.0, 5.0, 50.0])
    w_x0 = torch.minimum(snr, torch.tensor(5.0))
    # eps-MSE = SNR * x0-MSE and v-MSE = (1 + SNR) * x0-MSE, so each weight must give the same x0-scale weight
    assert torch.allclose(loss_weight("eps", snr, "min_snr") * snr, w_x0)
    assert torch.allclose(loss_weight("v", snr, "min_snr") * (snr + 1), w_x0)
    assert torch.allclose(loss_weight("x0", snr, "min_snr"), w_x0)
    assert torch.equal(loss_weight("eps", snr), torch.ones(4))


def test_denoiser_wrapper_inverts_the_prediction():
    s = build_schedule("linear", 1000)
    x0 = torch.randn(4, 1, 2, 2)
    t = torch.full((4,), 0.3)
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in s.alpha_sigma(t))
    true_eps = torch.randn_like(x0)
    xt = alpha * x0 + sigma * true_eps
    oracle = PredictionDenoiser(lambda x, t: true_eps, s, "eps")
    assert torch.allclose(oracle(xt, t), x0, atol=1e-4)


def test_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown prediction type 'score'"):
        PredictionDenoiser(lambda x, t: x, build_schedule("cosine"), "score")
    with pytest.raises(ValueError, match="unknown loss weighting 'p2'"):
        loss_weight("eps", torch.ones(1), "p2")
