"""The diffusion LightningModule: every parameterization trains and then samples with every sampler."""

import pytest
import torch

from pyramid_dm.diffusion import SAMPLERS, Denoiser, build_schedule, coefficients, q_sample
from pyramid_dm.engine.wrappers import Replace
from pyramid_dm.errors import UserError
from pyramid_dm.models import PixelDiffusion

UNET = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [], "norm_groups": 4}


def _tiny(**kw):
    return PixelDiffusion(image_size=8, channels=1, num_classes=0, unet=UNET, ema_decay=0.0, **kw)


SETUPS = [
    {"prediction": "eps"},
    {"prediction": "x0", "loss_weighting": "min_snr"},
    {"prediction": "v", "schedule": "linear", "zero_terminal_snr": True},
    {"prediction": "edm", "schedule": "edm", "training_noise": "lognormal", "loss_weighting": "edm"},
    {"prediction": "flow", "schedule": "flow", "num_timesteps": 0, "training_noise": "logit_normal"},
]
PATTERN = torch.linspace(-0.5, 0.5, 64, dtype=torch.float64).reshape(1, 1, 8, 8)
SPREAD = 0.2


class OracleNet(torch.nn.Module):
    """What a perfectly trained network of ``prediction`` outputs for data x0 ~ N(PATTERN, SPREAD^2 I):
    F = (D*(x~; sigma) - c_skip x~) / c_out, with the exact Gaussian denoiser D* and sigma read back from c_noise."""

    def __init__(self, prediction, schedule):
        super().__init__()
        self.prediction, self.schedule = prediction, schedule

    def forward(self, x_in, level, **cond):
        level = level.double()[0]
        sigma = {"edm": (4 * level).exp(), "flow": level / (1 - level)}.get(self.prediction)  # c_noise read back
        sigma = self.schedule.sigma(level) if sigma is None else sigma
        c_skip, c_out, c_in = coefficients(self.prediction, sigma)
        x = x_in.double() / c_in
        d = PATTERN + SPREAD**2 / (SPREAD**2 + sigma**2) * (x - PATTERN)
        return (d - c_skip * x) / c_out


@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: s["prediction"])
def test_every_parameterization_samples_with_every_sampler(setup):
    """A model whose network is the exact solution in its parameterization must reproduce the data distribution with
    every sampler: the preconditioning, the noise-level input and the samplers fit together."""
    model = _tiny(**setup)
    den = Denoiser(
        OracleNet(setup["prediction"], model.engine.schedules[-1]), model.engine.schedules[-1], setup["prediction"]
    )
    for name in [n for n, spec in SAMPLERS.items() if spec.kind == "diffusion"]:  # few-step ones need their models
        steps = {
            "ddpm": 200,
            "ddim": 100,
            "euler": 100,
            "flow_euler": 100,
            "heun": 50,
            "euler_maruyama": 200,
            "pc": 100,
            "ald": 60,
        }.get(name, 25)  # first-order ones need more, and Langevin dynamics more steps per level
        options = {"n_steps_each": 20} if name == "ald" else {}
        g = torch.Generator().manual_seed(1)
        out = model.sample(400, name, steps, generator=g, wrappers=[Replace(den)], **options).double()
        assert (out.mean(0) - PATTERN[0]).abs().max().item() < 0.05, (setup, name)
        assert out.std(0).mean().item() == pytest.approx(SPREAD, rel=0.1), (setup, name)


@pytest.mark.parametrize("setup", SETUPS, ids=lambda s: s["prediction"])
def test_every_parameterization_trains(setup):
    """40 Adam steps on a fixed batch and fixed noise levels lower each parameterization's loss by half."""
    torch.manual_seed(0)
    model = _tiny(**setup)
    images = (PATTERN.float() + SPREAD * torch.randn(16, 1, 8, 8)).clamp(-1, 1)
    u, noise = torch.rand(16), torch.randn(16, 1, 8, 8)
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model.engine.loss(images, None, u, noise, net=model.net).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert torch.isfinite(torch.tensor(losses)).all() and losses[-1] < 0.5 * losses[0], losses[::10]


def test_eps_loss_is_ddpm_l_simple():
    """The preconditioned loss for eps with uniform weighting equals DDPM's ||eps - eps_theta(x_t, t)||^2."""
    torch.manual_seed(0)
    model = _tiny(schedule="cosine", prediction="eps")
    images, noise, u = torch.randn(8, 1, 8, 8), torch.randn(8, 1, 8, 8), torch.rand(8)
    t = model.engine.schedules[-1].from_uniform(u)
    xt, _ = q_sample(images, t, model.engine.schedules[-1], noise)
    expected = (model.net(xt, t) - noise).pow(2).flatten(1).mean(1)
    assert torch.allclose(model.engine.loss(images, None, u, noise, net=model.net), expected, rtol=1e-5, atol=1e-6)


def test_resolution_shift_is_applied_from_the_image_size():
    model = _tiny(schedule="cosine", num_timesteps=0, shift_reference_resolution=32)
    t = torch.tensor([0.5], dtype=torch.float64)
    base = build_schedule("cosine", None)
    assert (model.engine.schedules[-1].log_snr(t) - base.log_snr(t)).item() == pytest.approx(
        2 * torch.log(torch.tensor(4.0))
    )


def test_bad_model_settings_are_clear_errors():
    with pytest.raises(UserError, match="'eps' cannot be used with the zero-terminal-SNR schedule"):
        _tiny(prediction="eps", zero_terminal_snr=True)
    with pytest.raises(UserError, match="model.training_noise 'uniform' is not one of"):
        _tiny(training_noise="uniform")
    with pytest.raises(UserError, match="model.loss_weighting 'p2' is not one of"):
        _tiny(loss_weighting="p2")
    with pytest.raises(UserError, match="unknown sampler 'plms'"):
        _tiny(sampler="plms")
    with pytest.raises(UserError, match="label_dropout must lie in"):
        _tiny(label_dropout=1.0)


def test_callback_sampler_settings_are_checked_when_the_config_is_read():
    from pyramid_dm.callbacks import SampleGrid, SampleQuality

    with pytest.raises(UserError, match="SampleGrid.sampler 'plms' is not one of"):
        SampleGrid(sampler="plms")
    with pytest.raises(UserError, match="SampleQuality.steps must be >= 1"):
        SampleQuality(steps=0)


def test_the_autoencoder_module_exposes_its_networks_options_with_the_networks_defaults():
    """AutoencoderModel lists the network's options flat (their YAML and checkpoint names); the defaults live in the
    network, and the module must not drift from them (only ``norm_groups`` is not exposed)."""
    import inspect

    from pyramid_dm.models import AutoencoderModel
    from pyramid_dm.nets.autoencoder import autoencoder_options

    module = inspect.signature(AutoencoderModel).parameters
    net = autoencoder_options()
    assert set(net) - set(module) == {"norm_groups"}
    assert {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in net.items() if k in module} == {
        k: tuple(module[k].default) if isinstance(module[k].default, list | tuple) else module[k].default
        for k in net
        if k in module
    }


def test_the_fused_optimizer_switch_picks_the_kernel_and_steps_like_the_default():
    """``fused_optimizer``: None is on only for weights on a GPU (so off here), True/False as given; one AdamW step
    with the fused kernel moves the weights as the default one does."""
    steps = {}
    for fused in (None, True):
        torch.manual_seed(0)
        model = _tiny(fused_optimizer=fused, warmup_steps=0)
        model.effective_lr = lambda: 1e-3  # no Trainer here to read the batch size from
        opt = model.configure_optimizers()["optimizer"]
        assert opt.param_groups[0]["fused"] is (fused is True)
        loss, _ = model.engine.training_loss(PATTERN.float().expand(4, -1, -1, -1), torch.zeros(4, dtype=torch.long))
        loss.backward()
        opt.step()
        steps[fused] = torch.cat([p.detach().flatten() for p in model.net.parameters()])
    torch.testing.assert_close(steps[True], steps[None], rtol=1e-5, atol=1e-6)
