"""MeanFlow (Geng, Deng, Bai, Kolter, He 2025, "Mean Flows for One-step Generative Modeling"): a network of the average
velocity of flow matching's straight path z_t = (1 - t) x0 + t eps (:mod:`.schedules.flow`) between times r <= t,
    u(z_t, r, t) = 1 / (t - r) int_r^t v(z_s, s) ds,   so that   z_r = z_t - (t - r) u(z_t, r, t)   exactly,
trained toward the MeanFlow identity (Eq. 6, its target detached, Eq. 10)
    u_tgt = v_t - (t - r) d/dt u(z_t, r, t),   d/dt u = v_t d_z u + d_t u,
the total derivative along (dz/dt, dr/dt, dt/dt) = (v_t, 0, 1), one Jacobian-vector product (``torch.func.jvp``:
forward-mode, so the network's parameters keep their ordinary gradients). v_t = eps - x0; with classifier-free
guidance folded in (Sec. 4.2, Eq. 13-16) v~ = w v_t + (1 - w) u(z_t, t, t | null) for the labelled samples of a
step (w = ``guidance_scale``, only for t inside ``guidance_interval``), and v~ = v_t for those trained without
their label; sampling then needs one call per step and no guidance branch.
(r, t): two logit-normal(mean, std) draws, sorted so that r <= t, with r = t for a fraction 1 - ``ratio`` (the
paper: lognorm(-0.4, 1.0), 25% r != t). Loss: the adaptive weighting (Eq. 22) sg(w) ||Delta||^2 with
w = 1 / (||Delta||^2 + c)^p (p = 1, c = 1e-3), ||.||^2 the per-sample mean square.

In this framework the network is the ``flow`` parameterization's F with a second time input, the interval t - r
(``interval=``, zero-initialised in every network, so u(z, t, t) starts as the flow model it may be tuned from), and
:class:`AverageVelocity` is its denoiser: D(x~; sigma_t, sigma_to=sigma_r) = z_t - t u(z_t, r, t), so that a flow
Euler step from t to r with that x0-estimate lands on z_r exactly (:func:`.samplers.few_step.meanflow`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..parameterization import Denoiser, WrappedDenoiser
from ..schedules.flow import flow_time


def network_window(denoiser: Denoiser) -> tuple[float, float]:
    """The network time (e, a) of the denoiser's path from t = 0 to 1 (a Pyramidal Flow stage's window; (0, 1))."""
    return denoiser.time_window or (0.0, 1.0)


def check_flow(denoiser: Denoiser) -> None:
    if not denoiser.parameterization.velocity or not denoiser.schedule.straight_path:
        raise ValueError(
            "MeanFlow is defined on flow matching's straight path: use prediction 'flow' with schedule 'flow', "
            f"not prediction {denoiser.prediction!r} with schedule {denoiser.schedule.name!r}"
        )


def velocity(denoiser: Denoiser, z: Tensor, r: Tensor, t: Tensor, **cond) -> Tensor:
    """u(z, r, t): the network on the path's own z_t (no preconditioning beyond the flow one, c_in x~ = z_t), seeing the
    time e + (a - e) t and the interval (a - e)(t - r) of its window; differentiable in z, r and t."""
    e, a = network_window(denoiser)
    p = next(denoiser.net.parameters())
    t, r = t.to(p.dtype), r.to(p.dtype)
    return denoiser.net(z.to(p.dtype), e + (a - e) * t, interval=(a - e) * (t - r), **cond)


class AverageVelocity(WrappedDenoiser):
    """The MeanFlow denoiser of a flow :class:`~.parameterization.Denoiser` whose network takes ``interval``:
    D(x~; sigma, sigma_to=s) = z_t - t u(z_t, r, t), r the time of ``sigma_to`` (default: r = t, the instantaneous
    velocity, i.e. the plain flow denoiser)."""

    def __init__(self, denoiser: Denoiser):
        check_flow(denoiser)
        super().__init__(denoiser)

    def forward(self, x: Tensor, sigma: Tensor, sigma_to: Tensor | None = None, **cond) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        e, a = network_window(self.denoiser)
        t = flow_time(sigma)
        r = t if sigma_to is None else flow_time(torch.as_tensor(sigma_to, dtype=torch.float64))
        interval = ((a - e) * (t - r)).to(device=x.device, dtype=torch.float32).expand(x.shape[0])
        return self.denoiser(x, sigma, interval=interval, **cond)


@dataclass(frozen=True)
class TimeSampler:
    """(r, t) of a MeanFlow training batch (the module docstring)."""

    mean: float = -0.4
    std: float = 1.0
    ratio: float = 0.25

    def __post_init__(self):
        if not 0 <= self.ratio <= 1:
            raise ValueError(f"objective_options.ratio (the share of r != t) must lie in [0, 1], got {self.ratio}")
        if not self.std > 0:
            raise ValueError(f"objective_options.std must be > 0, got {self.std}")

    def draw(self, n: int, device=None, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        z = torch.randn(2, n, generator=generator, device=device)
        ts = torch.sigmoid(self.mean + self.std * z)
        r, t = ts.min(0).values, ts.max(0).values
        same = torch.rand(n, generator=generator, device=device) >= self.ratio
        return torch.where(same, t, r), t


def check_times(r: Tensor, t: Tensor) -> None:
    """A ValueError unless 0 <= r <= t <= 1 for every sample."""
    bad = (r > t) | (r < 0) | (t > 1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"MeanFlow times need 0 <= r <= t <= 1; sample {i} has r = {float(r[i]):.4g}, t = {float(t[i]):.4g}"
        )


def meanflow_target(fn, z: Tensor, r: Tensor, t: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """(u, u_tgt): u = fn(z, r, t) with its graph (for the loss's gradient) and the detached target
    v - (t - r) (v d_z u + d_t u) from one JVP of ``fn`` along (v, 0, 1). Attention runs its math kernel, the one
    with a forward-mode derivative."""
    check_times(r, t)
    with sdpa_kernel(SDPBackend.MATH):
        u, dudt = torch.func.jvp(lambda z_, t_: fn(z_, r, t_), (z, t), (v, torch.ones_like(t)))
    gap = (t - r).to(u.dtype).reshape(-1, *([1] * (u.ndim - 1)))
    return u, (v.to(u.dtype) - gap * dudt).detach()


def adaptive_loss(u: Tensor, target: Tensor, p: float = 1.0, c: float = 1e-3) -> Tensor:
    """Per-sample sg(1 / (||Delta||^2 + c)^p) ||Delta||^2 (MeanFlow Eq. 22), ||.||^2 the mean square."""
    sq = (u.float() - target.float()).pow(2).flatten(1).mean(1)
    return sq / (sq.detach() + c) ** p
