"""A user's own module of parts, outside the package: one toy variant of each kind of part, each registered under
its own name. ``PYRAMID_DM_PLUGINS=toy_parts`` (with this folder importable) makes ``fit``,
``sample``, ``evaluate`` and ``search-steps`` know them; nothing in pyramid_dm is edited.
The toys are real variants: each changes what it claims to change (tests/test_plugins.py checks that it ran)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyramid_dm.diffusion.parameterization import PREDICTIONS, Parameterization
from pyramid_dm.diffusion.pyramid.layouts import LAYOUTS, NativeLayout
from pyramid_dm.diffusion.samplers.core import SAMPLERS, SamplerSpec
from pyramid_dm.diffusion.samplers.state import check_sigmas, start
from pyramid_dm.diffusion.schedules.base import SCHEDULES, NoiseSchedule, ScheduleBuilder
from pyramid_dm.diffusion.schedules.discretization import DISCRETIZATIONS
from pyramid_dm.diffusion.training.losses import WEIGHTINGS, LossWeighting
from pyramid_dm.diffusion.training.times import TRAINING_TIMES, TrainingTimes
from pyramid_dm.engine.first_stages import PYRAMID_FIRST_STAGES, FirstStageSpec
from pyramid_dm.engine.objectives import OBJECTIVES, Denoising, StepLosses
from pyramid_dm.nets import NETWORKS, NetSpec
from pyramid_dm.stages import ImagePyramid

CALLS: dict[str, int] = {}  # how often each toy ran (in this process)


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


@torch.no_grad()
def toy_euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, damping: float = 1.0):
    """Euler on the probability-flow ODE, with a ``damping`` option (1 = plain Euler)."""
    _count("sampler")
    sigmas, cond = check_sigmas(sigmas), cond or {}
    x = start(x, sigmas)
    for i in range(len(sigmas) - 1):
        x0 = denoiser(x, sigmas[i], **cond)
        x = x + damping * (sigmas[i + 1] - sigmas[i]) * (x - x0) / sigmas[i]
        if callback:
            callback(i, x, x0)
    return x


def toy_grid(schedule: NoiseSchedule, steps: int) -> torch.Tensor:
    """Uniform in sigma~ between the schedule's range ends, then 0."""
    _count("discretization")
    lo, hi = schedule.sigma_range()
    return torch.cat([torch.linspace(hi, lo, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


class ToyLinearSchedule(NoiseSchedule):
    """log-SNR linear in t from +8 to -8 (continuous)."""

    name = "toy_linear"

    def log_snr(self, t):
        return 8.0 - 16.0 * t.double()

    def t_of_log_snr(self, lam):
        return ((8.0 - torch.as_tensor(lam, dtype=torch.float64)) / 16.0).clamp(0, 1)


class ToyScheduleBuilder(ScheduleBuilder):
    def build(self, num_steps, zero_terminal_snr, log_snr_shift, options, resolution):
        _count("schedule")
        return ToyLinearSchedule()


class ToyX0(Parameterization):
    """x0-prediction with the EDM noise input ln(sigma) / 4."""

    name = "toy_x0"

    def coefficients(self, s, sigma_data):
        _count("prediction")
        return torch.zeros_like(s), torch.ones_like(s), 1 / (1 + s**2).sqrt()

    def c_noise(self, sigma, schedule, t=None, window=None):
        return sigma.log() / 4


class ToyTimes(TrainingTimes):
    """t uniform on [0.05, 1]."""

    name = "toy_times"

    def draw(self, schedule, u):
        _count("training_noise")
        t = 0.05 + 0.95 * u
        return t, schedule.sigma(t)


class ToyWeighting(LossWeighting):
    """The x0 MSE weighted by min(SNR, 1) + 0.1."""

    name = "toy_weighting"

    def weight(self, sigma, c_out, sigma_data):
        _count("weighting")
        return ((sigma**-2).clamp(max=1.0) + 0.1) * c_out**2


class ToyNet(nn.Module):
    """Two 3x3 convolutions per level with a noise-level (and class) embedding: not a UNet, no attention."""

    def __init__(self, spec: NetSpec, hidden: int = 8):
        super().__init__()
        pairs = list(zip(spec.level_channels, spec.context_channels))
        self.heads = nn.ModuleList(nn.Conv2d(c + ctx, hidden, 3, padding=1) for c, ctx in pairs)
        self.outs = nn.ModuleList(nn.Conv2d(hidden, c, 3, padding=1) for c in spec.level_channels)
        self.noise = nn.Linear(1, hidden)
        self.classes = nn.Embedding(spec.num_classes + 1, hidden) if spec.num_classes else None

    def forward(self, x, c_noise, class_labels=None, context=None, aug_t=None, level=0):
        _count("network")
        h = x if context is None else torch.cat([x, context.to(x.dtype)], dim=1)
        emb = self.noise(c_noise.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1))
        if self.classes is not None and class_labels is not None:
            emb = emb + self.classes(class_labels)
        return self.outs[level](F.silu(self.heads[level](h) + emb[:, :, None, None]))


class TwoDraws(Denoising):
    """The denoising loss averaged over two independent draws (times and noise) per image: half the variance of the
    gradient estimate for twice the network passes."""

    name = "toy_two_draws"

    def step(self, engine, images, labels) -> StepLosses:
        _count("objective")
        (a, _), (b, _) = engine.training_loss(images, labels), engine.training_loss(images, labels)
        return StepLosses((a + b) / 2, {"train/loss": (a + b) / 2, "train/draw_gap": (a - b).abs().detach()})

    def training_flops(self, engine, batch_size: int) -> int:
        return 2 * super().training_flops(engine, batch_size)


class SharedTime(NativeLayout):
    """Native levels trained at one shared time per image (as Frido trains), with clean contexts."""

    name = "toy_shared_time"
    options = ()

    @classmethod
    def from_options(cls, options) -> SharedTime:
        return cls()

    def training_u(self, n: int, num_levels: int, device=None):
        _count("layout")
        return torch.rand(n, device=device)


def halves(o, p, recorded):
    """An image pyramid of two levels, the image at half and at full size (no ``model.resolutions`` to set)."""
    _count("first_stage")
    return ImagePyramid(o.channels, o.image_size, [o.image_size // 2, o.image_size])


SAMPLERS.register("toy_euler", SamplerSpec(toy_euler, "toy_grid"))
DISCRETIZATIONS.register("toy_grid", toy_grid)
SCHEDULES.register("toy_linear", ToyScheduleBuilder())
PREDICTIONS.register("toy_x0", ToyX0())
TRAINING_TIMES.register("toy_times", ToyTimes)
WEIGHTINGS.register("toy_weighting", ToyWeighting)
NETWORKS.register("toy_net", ToyNet)
OBJECTIVES.register("toy_two_draws", TwoDraws)
LAYOUTS.register("toy_shared_time", SharedTime)
PYRAMID_FIRST_STAGES.register("toy_halves", FirstStageSpec(halves, latent=False))
