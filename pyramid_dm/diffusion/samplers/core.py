"""Samplers: short functions that only call a denoiser D(x~, sigma~, **cond) -> x0_hat (see :mod:`.parameterization`).

Shared signature: ``sampler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, **options) -> x0``.
``x`` is the starting noise N(0, I); the sampler starts from x~ = x sqrt(1 + sigma_0^2) (the variance-preserving
x_T = noise in sigma space) and walks the decreasing ``sigmas`` (from :func:`sampling_sigmas`, last one 0). The state
is float64 (float32 on MPS), as in EDM; the denoiser casts it for the network. ``callback(i, x, x0_hat)`` is called
after every step. :func:`nfe` gives the number of denoiser calls a sampler makes for a given grid.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ...registry import Registry
from ..parameterization import DenoiserFn
from ..schedules.base import NoiseSchedule
from ..schedules.discretization import sampling_sigmas
from .few_step import consistency, meanflow
from .flow import flow_euler
from .langevin import ald, ald_nfe
from .score_sde import euler_maruyama, pc, pc_nfe
from .state import check_sigmas as _check_sigmas
from .state import noise as _noise
from .state import start as _start


@torch.no_grad()
def ddpm(denoiser: DenoiserFn, x, sigmas, *, cond=None, generator=None, callback=None, variance: str = "large"):
    """DDPM ancestral sampling (Ho et al. 2020, Eq. 6-7) between any two levels t > s of the grid, in VP form
    (abar = 1 / (1 + sigma~^2)): x_s ~ N(mu~, var), beta = 1 - abar_t / abar_s,
    mu~ = sqrt(abar_s) beta / (1 - abar_t) x0_hat + sqrt(1 - beta) (1 - abar_s) / (1 - abar_t) x_t,
    var = beta ("large", DDPM's CIFAR-10 choice) or beta (1 - abar_s) / (1 - abar_t) ("small"); no noise at the end."""
    if variance not in ("large", "small"):
        raise ValueError(f"unknown DDPM variance {variance!r}; choose 'large' or 'small'")
    sigmas, cond = _check_sigmas(sigmas), cond or {}
    x = _start(x, sigmas)
    for i, (st, ss) in enumerate(zip(sigmas[:-1].tolist(), sigmas[1:].tolist())):
        x0 = denoiser(x, sigmas[i], **cond)
        ab_t, ab_s = 1 / (1 + st**2), 1 / (1 + ss**2)
        beta = 1 - ab_t / ab_s
        xt = x * math.sqrt(ab_t)  # VP state
        xs = math.sqrt(ab_s) * beta / (1 - ab_t) * x0 + math.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * xt
        if ss > 0:
            var = beta if variance == "large" else beta * (1 - ab_s) / (1 - ab_t)
            xs = xs + math.sqrt(var) * _noise(x, generator)
        x = xs / math.sqrt(ab_s)
        if callback:
            callback(i, x, x0)
    return x


@torch.no_grad()
def ddim(denoiser: DenoiserFn, x, sigmas, *, cond=None, generator=None, callback=None, eta: float = 0.0):
    """DDIM (Song et al. 2021, Eq. 12) in sigma space: x~_s = x0_hat + sqrt(sigma~_s^2 - c~^2) eps_hat + c~ z with
    eps_hat = (x~_t - x0_hat) / sigma~_t and c~ = c / alpha_s,
    c = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s).
    eta = 0 is deterministic (= Euler in sigma space, = first-order DPM-Solver); eta = 1 is DDPM's "small" variance."""
    if eta < 0:
        raise ValueError(f"DDIM eta must be >= 0, got {eta}")
    sigmas, cond = _check_sigmas(sigmas), cond or {}
    x = _start(x, sigmas)
    for i, (st, ss) in enumerate(zip(sigmas[:-1].tolist(), sigmas[1:].tolist())):
        x0 = denoiser(x, sigmas[i], **cond)
        eps = (x - x0) / st
        ab_t, ab_s = 1 / (1 + st**2), 1 / (1 + ss**2)
        c = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * max(0.0, 1 - ab_t / ab_s)) / math.sqrt(ab_s)
        x = x0 + math.sqrt(max(0.0, ss**2 - c**2)) * eps
        if c > 0 and ss > 0:
            x = x + c * _noise(x, generator)
        if callback:
            callback(i, x, x0)
    return x


def _churn(x, sigma: float, n: int, churn: float, s_tmin: float, s_tmax: float, s_noise: float, generator):
    """EDM Alg. 2 lines 4-6: raise the noise level to sigma_hat = sigma (1 + gamma) by adding fresh noise."""
    gamma = min(churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0:
        return x, sigma
    sigma_hat = sigma * (1 + gamma)
    return x + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * _noise(x, generator), sigma_hat


def _edm(denoiser, x, sigmas, cond, generator, callback, second_order, churn, s_tmin, s_tmax, s_noise):
    sigmas, cond = _check_sigmas(sigmas), cond or {}
    x, n = _start(x, sigmas), len(sigmas) - 1
    for i in range(n):
        x, s_hat = _churn(x, float(sigmas[i]), n, churn, s_tmin, s_tmax, s_noise, generator)
        s_next = float(sigmas[i + 1])
        x0 = denoiser(x, torch.tensor(s_hat, dtype=torch.float64), **cond)
        d = (x - x0) / s_hat
        x_next = x + (s_next - s_hat) * d
        if second_order and s_next > 0:
            d_next = (x_next - denoiser(x_next, sigmas[i + 1], **cond)) / s_next
            x_next = x + (s_next - s_hat) * (d + d_next) / 2
        x = x_next
        if callback:
            callback(i, x, x0)
    return x


@torch.no_grad()
def euler(
    denoiser: DenoiserFn, x, sigmas, *, cond=None, generator=None, callback=None,
    churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
):  # fmt: skip
    """Euler on the probability-flow ODE dx~/dsigma = (x~ - D(x~; sigma)) / sigma (Karras et al. 2022, Alg. 2 without
    the correction), with optional churn: gamma = min(churn / N, sqrt(2) - 1) for sigma in [s_tmin, s_tmax]."""
    return _edm(denoiser, x, sigmas, cond, generator, callback, False, churn, s_tmin, s_tmax, s_noise)


@torch.no_grad()
def heun(
    denoiser: DenoiserFn, x, sigmas, *, cond=None, generator=None, callback=None,
    churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
):  # fmt: skip
    """EDM's Heun sampler (Karras et al. 2022, Alg. 2): an Euler step corrected by the slope at its end point, except
    for the last step to sigma = 0 (Euler). 2N - 1 denoiser calls for N intervals. Churn as in :func:`euler`."""
    return _edm(denoiser, x, sigmas, cond, generator, callback, True, churn, s_tmin, s_tmax, s_noise)


def _dpmpp_multistep(denoiser, x, sigmas, cond, callback, order: int, lower_order_final: bool):
    """DPM-Solver++ multistep in data prediction (Lu et al. 2022, Alg. 2; diffusers ``DPMSolverMultistepScheduler``)
    in sigma space, where lambda = -log sigma~ and x~_t = (sigma_t / sigma_s) x~_s - expm1(-h) D_0 + ..."""
    sigmas, cond = _check_sigmas(sigmas), cond or {}
    x, n = _start(x, sigmas), len(sigmas) - 1
    lam = -sigmas.log()  # +inf at sigma = 0
    history: list[Tensor] = []  # x0_hat at the previous levels, newest first
    for i in range(n):
        x0 = denoiser(x, sigmas[i], **cond)
        history = [x0, *history][:order]
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        k = min(order, len(history))
        if s_next == 0 or (lower_order_final and i == n - 1):
            k = 1  # the step to sigma = 0 is x~ = x0_hat; higher-order terms would multiply 1 / h = 0 by infinity
        elif lower_order_final and n < 15 and i == n - 2:
            k = min(k, 2)  # as diffusers: fewer than 15 steps use at most second order on the penultimate step
        h = float(lam[i + 1] - lam[i])
        phi1 = -math.expm1(-h)  # 1 - e^-h
        x = (s_next / s) * x + phi1 * history[0]
        if k >= 2:
            r0 = float(lam[i] - lam[i - 1]) / h
            d1_0 = (history[0] - history[1]) / r0
            if k == 2:
                x = x + 0.5 * phi1 * d1_0
            else:
                r1 = float(lam[i - 1] - lam[i - 2]) / h
                d1_1 = (history[1] - history[2]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi2 = phi1 / h - 1  # (1 - e^-h) / h - 1
                phi3 = phi2 / h + 0.5  # ((1 - e^-h) / h - 1) / h + 1/2
                x = x - phi2 * d1 + phi3 * d2
        if callback:
            callback(i, x, x0)
    return x


@torch.no_grad()
def dpmpp_2m(denoiser: DenoiserFn, x, sigmas, *, cond=None, generator=None, callback=None):
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep with r = h_{i-1} / h_i,
    D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, x~_{i+1} = (sigma_{i+1}/sigma_i) x~_i - expm1(-h) D; one call per step.
    The first step and the step to sigma = 0 are first order."""
    return _dpmpp_multistep(denoiser, x, sigmas, cond, callback, order=2, lower_order_final=True)


@torch.no_grad()
def dpmpp_3m(denoiser: DenoiserFn, x, sigmas, *, cond=None, generator=None, callback=None):
    """DPM-Solver++(3M): third-order multistep (Lu et al. 2022, App. B; diffusers ``solver_order=3``). Orders 1, 2
    on the first two steps; first order to sigma = 0 and at most second order on the penultimate step of a
    grid shorter than 15 steps, for stability, as diffusers does."""
    return _dpmpp_multistep(denoiser, x, sigmas, cond, callback, order=3, lower_order_final=True)


@dataclass(frozen=True)
class SamplerSpec:
    """One registered sampler: its function, the grid it uses unless told otherwise (what its authors recommend at
    low resolution) and its NFE rule ``nfe(steps, **options)``: denoiser calls per sample on a ``steps``-interval
    grid (per guidance branch), given every option of the function, its own defaults filled in (None: one call per
    step). ``kind``: the models it samples, as an objective declares what it trains
    (:attr:`~pyramid_dm.engine.objectives.Objective.model_kind`): ``diffusion`` (any denoiser: the ODE/SDE samplers),
    ``consistency`` or ``meanflow``. Calling the record calls the function."""

    fn: Callable[..., Tensor]
    grid: str
    nfe_rule: Callable[..., int] | None = None
    kind: str = "diffusion"

    def __call__(self, *args, **kwargs) -> Tensor:
        return self.fn(*args, **kwargs)

    @property
    def options(self) -> dict:
        """The sampler's own options (keyword-only, past ``cond``, ``generator`` and ``callback``) and defaults."""
        shared = {"cond", "generator", "callback"}
        params = inspect.signature(self.fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in shared}

    def check_options(self, name: str, options: dict) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(
                f"sampler {name!r} does not take these options: {unknown} (its options: {sorted(self.options)})"
            )

    def nfe(self, steps: int, **options) -> int:
        if self.nfe_rule is None:
            return steps
        return int(self.nfe_rule(steps, **{**self.options, **options}))


SAMPLERS: Registry[SamplerSpec] = Registry("sampler")
SAMPLERS.register("ddpm", SamplerSpec(ddpm, "leading"))
SAMPLERS.register("ddim", SamplerSpec(ddim, "leading"))
SAMPLERS.register("euler", SamplerSpec(euler, "karras"))
SAMPLERS.register("heun", SamplerSpec(heun, "karras", lambda steps, **_: 2 * steps - 1))
SAMPLERS.register("dpmpp_2m", SamplerSpec(dpmpp_2m, "logsnr"))
SAMPLERS.register("dpmpp_3m", SamplerSpec(dpmpp_3m, "logsnr"))
SAMPLERS.register("ald", SamplerSpec(ald, "logsnr", ald_nfe))  # NCSN's ALD on its geometric levels, :mod:`.langevin`
SAMPLERS.register("pc", SamplerSpec(pc, "logsnr", pc_nfe))  # predictor-corrector (Song et al. 2021), :mod:`.score_sde`
SAMPLERS.register("euler_maruyama", SamplerSpec(euler_maruyama, "logsnr"))  # the reverse SDE, :mod:`.score_sde`
SAMPLERS.register("flow_euler", SamplerSpec(flow_euler, "flow"))  # diffusers' FlowMatchEulerDiscreteScheduler grid
# few-step samplers of consistency and MeanFlow models (:mod:`.few_step`), uniform in the schedule's time
SAMPLERS.register("consistency", SamplerSpec(consistency, "trailing", kind="consistency"))
SAMPLERS.register("meanflow", SamplerSpec(meanflow, "trailing", kind="meanflow"))


def get_sampler(name: str) -> SamplerSpec:
    """The registered sampler ``name`` (a ValueError listing the known ones)."""
    return SAMPLERS.lookup(name)


def nfe(sampler: str, steps: int, **options) -> int:
    """Denoiser calls of ``sampler`` on a ``steps``-interval grid with these ``options`` (per guidance branch)."""
    return get_sampler(sampler).nfe(steps, **options)


def steps_for_nfe(sampler: str, budget: int, **options) -> int:
    """The most steps whose NFE (with these sampler ``options``) fits ``budget`` (at least 1)."""
    spec = get_sampler(sampler)
    steps = 1
    while spec.nfe(steps + 1, **options) <= budget:
        steps += 1
    return steps


def sample(
    denoiser: DenoiserFn,
    noise: Tensor,
    schedule: NoiseSchedule,
    sampler: str = "dpmpp_2m",
    steps: int = 20,
    *,
    discretization: str | None = None,
    cond: dict | None = None,
    generator: torch.Generator | None = None,
    callback=None,
    **options,
) -> Tensor:
    """Run ``sampler`` for ``steps`` intervals of the schedule's grid (``discretization`` defaults to the sampler's
    own, :attr:`SamplerSpec.grid`); returns x0 in the dtype of ``noise``. Options the sampler does not take are a
    ValueError before it runs; an error raised inside it (or inside the network) surfaces as itself."""
    spec = get_sampler(sampler)
    spec.check_options(sampler, options)
    sigmas = sampling_sigmas(schedule, steps, discretization or spec.grid)
    out = spec(denoiser, noise, sigmas, cond=cond, generator=generator, callback=callback, **options)
    return out.to(noise.dtype)


class CountingDenoiser:
    """Wraps a denoiser and counts its calls (``nfe``: the number of function evaluations of a sampler run) and the
    rows it evaluated (``rows``: a batch of B is B; guidance's batched 2B is 2B)."""

    def __init__(self, denoiser: DenoiserFn):
        self.denoiser, self.nfe, self.rows = denoiser, 0, 0

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        self.nfe += 1
        self.rows += x.shape[0]
        return self.denoiser(x, sigma, **cond)
