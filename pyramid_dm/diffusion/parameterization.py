"""Parameterizations: wrappers that turn any network F into a denoiser D(x~; sigma~) -> x0_hat.

Every parameterization is one preconditioning (Karras et al. 2022, EDM, Table 1; sgm ``denoiser.py``):
    D(x~; sigma) = c_skip(sigma) x~ + c_out(sigma) F(c_in(sigma) x~; c_noise(sigma))
on x~ = x0 + sigma eps (sigma = sigma_t / alpha_t). With alpha = 1 / sqrt(1 + sigma^2), c_in x~ = x_t is the
variance-preserving input, and (Salimans & Ho 2022 for v = alpha eps - sigma_t x0):
    eps: c_skip = 1,                c_out = -sigma,                      c_in = alpha,  c_noise = t(sigma)
    x0:  c_skip = 0,                c_out = 1,                           c_in = alpha,  c_noise = t(sigma)
    v:   c_skip = alpha^2,          c_out = -sigma alpha,                c_in = alpha,  c_noise = t(sigma)
    edm: c_skip = sd^2/(s^2+sd^2),  c_out = s sd / sqrt(s^2 + sd^2),     c_in = 1/sqrt(s^2 + sd^2), c_noise = ln(s)/4
    flow: c_skip = 1/(1+s),         c_out = -s/(1+s),                    c_in = 1/(1+s), c_noise = s/(1+s)
t(sigma) is the schedule's time for that noise level: a network trained as eps/x0/v sees t in [0, 1], as in DDPM.
flow (flow matching, :mod:`.flow`): c_in x~ = x_t = (1 - t) x0 + t eps on the straight path, t = s / (1 + s), the
network predicts v = eps - x0 and D = x_t - t v; it sees the path's own time t whatever the schedule (SD3). A
``time_window`` (e, a) maps that t to e + (a - e) t: a stage of Pyramidal Flow (:mod:`.pyramid_flow`) runs its own
path from t = 1 to 0 while the network sees where on the whole trajectory the stage lies.
The network's training target follows from D = x0:  F* = ((1 - c_skip) x0 - c_skip sigma eps) / c_out,
and ||F - F*||^2 = ||D - x0||^2 / c_out^2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn

from ..registry import Registry
from .schedules.base import NoiseSchedule
from .schedules.flow import flow_time


class Parameterization:
    """One row of the table above: (c_skip, c_out, c_in) and c_noise at a noise level. A new parameterization is one
    subclass registered in :data:`PREDICTIONS`; the denoiser, the loss and the weightings read only these methods.
    ``time_window``: whether a stage's time window (Pyramidal Flow) applies to it; ``velocity``: whether the network
    predicts the straight path's velocity eps - x0 (what MeanFlow's average velocity generalises); ``diffusers``: the
    diffusers ``prediction_type`` that the raw network output F is, given x_t and t (None: only D is, as "sample")."""

    name = "parameterization"
    time_window = False
    velocity = False
    diffusers: str | None = None

    def coefficients(self, s: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def c_noise(self, sigma: Tensor, schedule: NoiseSchedule, t=None, window=None) -> Tensor:
        """The network's noise input at ``sigma`` (float64): by default the schedule time t(sigma) (the drawn ``t``
        in training), as a DDPM network sees it."""
        if t is not None:
            return torch.as_tensor(t, dtype=torch.float64)
        if sigma.numel() == 1 and sigma.device.type == "cpu":
            return torch.tensor(schedule.t_of_sigma_value(float(sigma)), dtype=torch.float64)
        return schedule.t_of_sigma(sigma)

    def check(self, schedule: NoiseSchedule) -> None:
        """A ValueError unless this parameterization can be used with ``schedule``."""


class EpsPrediction(Parameterization):
    name = "eps"
    diffusers = "epsilon"

    def coefficients(self, s, sigma_data):
        return torch.ones_like(s), -s, 1 / (1 + s**2).sqrt()

    def check(self, schedule: NoiseSchedule) -> None:
        """eps-prediction cannot give x0 where alpha = 0: x0 = (x_t - sigma_t eps) / alpha_t (Lin et al. 2024)."""
        if schedule.zero_terminal_snr:
            raise ValueError(
                f"prediction 'eps' cannot be used with the zero-terminal-SNR schedule {schedule.name!r}: at t = 1 "
                "alpha = 0 and x0 = (x_t - sigma eps) / alpha is undefined; use prediction 'v' (or 'x0')"
            )


class X0Prediction(Parameterization):
    name = "x0"
    diffusers = "sample"

    def coefficients(self, s, sigma_data):
        return torch.zeros_like(s), torch.ones_like(s), 1 / (1 + s**2).sqrt()


class VPrediction(Parameterization):
    name = "v"
    diffusers = "v_prediction"

    def coefficients(self, s, sigma_data):
        alpha = 1 / (1 + s**2).sqrt()
        return alpha**2, -s * alpha, alpha


class EDMPreconditioning(Parameterization):
    name = "edm"

    def coefficients(self, s, sigma_data):
        sd2 = sigma_data**2
        return sd2 / (s**2 + sd2), s * sigma_data / (s**2 + sd2).sqrt(), 1 / (s**2 + sd2).sqrt()

    def c_noise(self, sigma, schedule, t=None, window=None):
        return sigma.log() / 4


class FlowPrediction(Parameterization):
    name = "flow"
    diffusers = "flow_prediction"
    time_window = True
    velocity = True

    def coefficients(self, s, sigma_data):
        return 1 / (1 + s), -s / (1 + s), 1 / (1 + s)

    def c_noise(self, sigma, schedule, t=None, window=None):
        e, a = window or (0.0, 1.0)
        return e + (a - e) * flow_time(sigma)


PREDICTIONS: Registry[Parameterization] = Registry("prediction type")
for _row in (EpsPrediction, X0Prediction, VPrediction, EDMPreconditioning, FlowPrediction):
    PREDICTIONS.register(_row.name, _row())


class DenoiserFn(Protocol):
    """What every sampler calls: x0_hat = D(x~, sigma~, **cond); sigma~ is a 0-d or per-sample tensor."""

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor: ...


def check_prediction(prediction: str) -> str:
    PREDICTIONS.lookup(prediction)
    return prediction


def check_pair(prediction: str, schedule: NoiseSchedule) -> None:
    """A ValueError unless ``prediction`` can be used with ``schedule``."""
    PREDICTIONS.lookup(prediction).check(schedule)


def expand(a: Tensor, like: Tensor) -> Tensor:
    """A scalar or per-sample coefficient shaped to broadcast over ``like``."""
    a = torch.as_tensor(a, device=like.device)
    return a.reshape(-1, *([1] * (like.ndim - 1))) if a.ndim == 1 else a


def coefficients(prediction: str, sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) of ``prediction`` at noise level ``sigma`` (float64)."""
    return PREDICTIONS.lookup(prediction).coefficients(torch.as_tensor(sigma, dtype=torch.float64), sigma_data)


def network_input(prediction: str, x0: Tensor, eps: Tensor, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """c_in (x0 + sigma eps), the network's input in training, without forming x0 + sigma eps (sigma reaches 3e6 at
    zero terminal SNR, where x0 would drown in float32)."""
    _, _, c_in = coefficients(prediction, sigma, sigma_data)
    return expand(c_in, x0).to(x0.dtype) * x0 + expand(c_in * sigma, x0).to(x0.dtype) * eps


def network_target(prediction: str, x0: Tensor, eps: Tensor, sigma: Tensor, sigma_data: float = 0.5) -> Tensor:
    """F* such that D = x0 for x~ = x0 + sigma eps: ((1 - c_skip) x0 - c_skip sigma eps) / c_out."""
    c_skip, c_out, _ = coefficients(prediction, sigma, sigma_data)
    a = expand((1 - c_skip) / c_out, x0).to(x0.dtype)
    b = expand(c_skip * sigma / c_out, x0).to(x0.dtype)
    return a * x0 - b * eps


class Denoiser(nn.Module):
    """Wraps a network ``net(x_in, c_noise, **cond)`` into D(x~; sigma~) -> x0_hat (see the module docstring).

    ``clip_x0`` clamps x0_hat to the data range [-1, 1] (pixel space only). ``time_window`` (flow only): the
    network's time is e + (a - e) t (see the module docstring). The network runs in its own dtype; the sampler's
    state (float64 in our samplers) is cast for it and the output cast back.
    """

    def __init__(
        self,
        net: nn.Module | Callable,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        sigma_data: float = 0.5,
        clip_x0: bool = False,
        time_window: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.parameterization = PREDICTIONS.lookup(prediction)
        self.parameterization.check(schedule)
        if time_window is not None and not self.parameterization.time_window:
            raise ValueError(f"a time window applies to flow networks only, not to prediction {prediction!r}")
        self.net, self.schedule = net, schedule
        self.prediction, self.sigma_data, self.clip_x0 = prediction, sigma_data, clip_x0
        self.time_window = time_window

    def c_noise(self, sigma: Tensor, t: Tensor | None = None) -> Tensor:
        """c_noise of the parameterization (float64): the schedule time t(sigma) for eps/x0/v networks, ln(sigma)/4
        for EDM ones, the path's time sigma / (1 + sigma) (in its window) for flow ones."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self.parameterization.c_noise(sigma, self.schedule, t, self.time_window)

    def _net_dtype(self, x: Tensor) -> torch.dtype:
        p = next(self.net.parameters(), None) if isinstance(self.net, nn.Module) else None
        return p.dtype if p is not None else (torch.float32 if x.dtype == torch.float64 else x.dtype)

    def network(self, x_in: Tensor, sigma: Tensor, t: Tensor | None = None, **cond) -> Tensor:
        """F(x_in; c_noise) on a batch, ``x_in`` already scaled by c_in."""
        dtype = self._net_dtype(x_in)  # c_noise in float32, or float64 for a float64 network
        c_noise = self.c_noise(sigma, t).to(device=x_in.device, dtype=torch.promote_types(dtype, torch.float32))
        return self.net(x_in.to(dtype), c_noise.expand(x_in.shape[0]), **cond)

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        c_skip, c_out, c_in = (expand(c, x).to(x.dtype) for c in coefficients(self.prediction, sigma, self.sigma_data))
        out = self.network(c_in * x, sigma, **cond).to(x.dtype)
        x0 = c_skip * x + c_out * out
        return x0.clamp(-1, 1) if self.clip_x0 else x0


class WrappedDenoiser(nn.Module):
    """A denoiser built on a :class:`Denoiser` (``self.denoiser``) that reads like it: its schedule, prediction,
    sigma_data and network (a consistency function, MeanFlow's average velocity)."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser = denoiser

    schedule = property(lambda self: self.denoiser.schedule)
    prediction = property(lambda self: self.denoiser.prediction)
    sigma_data = property(lambda self: self.denoiser.sigma_data)
    net = property(lambda self: self.denoiser.net)
