"""Classifier-free guidance: exact on a toy conditional problem, and model-level checks."""

import pytest
import torch

from pyramid_dm.diffusion import ClassifierFreeGuidance, CountingDenoiser, build_schedule, sample
from pyramid_dm.engine.wrappers import Count, Guidance
from pyramid_dm.errors import UserError
from pyramid_dm.models import PixelDiffusion

CLASS_MEANS = torch.tensor([-1.0, 1.0], dtype=torch.float64)
STD = 0.5
SCHEDULE = build_schedule("linear", 1000)


def toy_denoiser(x, sigma, class_labels=None):
    """Exact D for x0 | c ~ N(m_c, STD^2) (1-d); the null label 2 is the 50/50 mixture of both classes."""
    v = STD**2 + float(sigma) ** 2

    def gaussian(m):
        return m + STD**2 / v * (x - m)

    if class_labels is not None and (class_labels < 2).all():
        return gaussian(CLASS_MEANS[class_labels].reshape(-1, 1))
    logit = ((x - CLASS_MEANS[0]) ** 2 - (x - CLASS_MEANS[1]) ** 2) / (2 * v)  # log p(c=1|x) - log p(c=0|x)
    w1 = torch.sigmoid(logit)
    return (1 - w1) * gaussian(CLASS_MEANS[0]) + w1 * gaussian(CLASS_MEANS[1])


def _draw(scale, n=4000, **kw):
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(0))
    labels = torch.ones(n, dtype=torch.long)
    den = ClassifierFreeGuidance(toy_denoiser, scale, {"class_labels": torch.full((n,), 2)}, **kw)
    counter = CountingDenoiser(den)
    out = sample(counter, z, SCHEDULE, "dpmpp_2m", 30, cond={"class_labels": labels})
    return out, counter


def test_scale_one_is_the_conditional_model_and_costs_one_call_per_step():
    z = torch.randn(500, 1, generator=torch.Generator().manual_seed(0))
    cond = {"class_labels": torch.ones(500, dtype=torch.long)}
    inner = CountingDenoiser(toy_denoiser)
    guided = ClassifierFreeGuidance(inner, 1.0, {"class_labels": torch.full((500,), 2)})
    a = sample(guided, z, SCHEDULE, "dpmpp_2m", 20, cond=cond)
    assert inner.nfe == 20
    assert torch.equal(a, sample(toy_denoiser, z, SCHEDULE, "dpmpp_2m", 20, cond=cond))
    assert a.mean().item() == pytest.approx(1.0, abs=0.05) and a.std().item() == pytest.approx(STD, rel=0.05)


def test_raising_the_scale_moves_samples_toward_the_class():
    """Class 1 sits at +1, class 0 at -1: guidance toward 1 must push samples away from class 0, monotonically."""
    means, wrong_side = [], []
    for scale in (0.0, 1.0, 2.0, 4.0):
        out, _ = _draw(scale)
        means.append(out.mean().item())
        wrong_side.append((out < 0).float().mean().item())
    assert means[0] == pytest.approx(0.0, abs=0.08) and wrong_side[0] == pytest.approx(0.5, abs=0.05)  # mixture
    assert wrong_side[1] == pytest.approx(0.023, abs=0.01)  # scale 1: exactly the class, P(N(1, 0.5^2) < 0)
    assert means[0] < means[1] < means[2] < means[3]
    assert wrong_side[1] > wrong_side[2] >= wrong_side[3]


def test_guidance_interval_and_rescale():
    """Outside the interval the conditional model runs alone (one call); rescale 1 restores the conditional std."""
    inner = CountingDenoiser(toy_denoiser)
    n = 64
    x = torch.randn(n, 16).double()  # rescale matches per-sample std over the 16 features
    cond, null = {"class_labels": torch.ones(n, dtype=torch.long)}, {"class_labels": torch.full((n,), 2)}
    g = ClassifierFreeGuidance(inner, 3.0, null, interval=(0.5, 10.0))
    assert torch.equal(g(x, torch.tensor(20.0), **cond), toy_denoiser(x, 20.0, **cond)) and inner.nfe == 1
    g(x, torch.tensor(2.0), **cond)
    assert inner.nfe == 3
    plain = ClassifierFreeGuidance(toy_denoiser, 3.0, null)(x, torch.tensor(2.0), **cond)
    rescaled = ClassifierFreeGuidance(toy_denoiser, 3.0, null, rescale=1.0)(x, torch.tensor(2.0), **cond)
    d_c = toy_denoiser(x, 2.0, **cond)
    assert torch.allclose(rescaled.std(dim=1), d_c.std(dim=1), rtol=1e-9)
    assert (plain.std(dim=1) > d_c.std(dim=1) * 1.05).all()
    for bad, match in [({"scale": -1.0}, "scale must be >= 0"), ({"interval": (2.0, 1.0)}, "lo < hi")]:
        args = {"scale": 2.0, **bad}
        with pytest.raises(ValueError, match=match):
            ClassifierFreeGuidance(toy_denoiser, uncond=null, **args)


def _tiny(**kw):
    unet = {
        "base_channels": 8,
        "channel_mult": [1, 2],
        "num_res_blocks": 1,
        "attention_resolutions": [],
        "norm_groups": 4,
    }
    return PixelDiffusion(image_size=8, channels=1, unet=unet, **kw)


def test_model_guidance_errors_are_clear():
    with pytest.raises(UserError, match="needs a class-conditional model"):
        _tiny(num_classes=0).sample(2, "ddim", 2, wrappers=[Guidance(2.0)])
    with pytest.raises(UserError, match="trained with label_dropout=0"):
        _tiny(num_classes=3, label_dropout=0.0).sample(
            2, "ddim", 2, labels=torch.tensor([0, 1]), wrappers=[Guidance(2.0)]
        )
    with pytest.raises(UserError, match="needs class labels"):
        _tiny(num_classes=3).sample(2, "ddim", 2, wrappers=[Guidance(2.0)])
    count = Count()
    images = _tiny(num_classes=3).sample(2, "ddim", 3, labels=torch.tensor([0, 2]), wrappers=[Guidance(2.0), count])
    assert images.shape == (2, 1, 8, 8) and count.nfe == [6]  # two evaluations per guided step


def test_label_dropout_trains_the_null_class():
    torch.manual_seed(0)
    model = _tiny(num_classes=3, label_dropout=0.5)
    seen = []
    model.net.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["class_labels"]), with_kwargs=True)
    images, labels = torch.zeros(400, 1, 8, 8), torch.randint(0, 3, (400,))
    model.training_step((images, labels, torch.arange(400)), 1)
    frac_null = (seen[0] == 3).float().mean().item()
    assert frac_null == pytest.approx(0.5, abs=0.08)
