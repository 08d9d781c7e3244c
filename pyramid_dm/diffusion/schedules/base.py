"""Noise schedules: when during diffusion how much noise there is.

Variance-preserving form: x_t = alpha_t x0 + sigma_t eps with alpha_t^2 + sigma_t^2 = 1 at a time t in [0, 1]
(t = 0 clean, t = 1 noisiest). A schedule is defined by its log signal-to-noise ratio
lambda_t = log(alpha_t^2 / sigma_t^2) (float64), so alpha_t^2 = sigmoid(lambda_t) and sigma_t^2 = sigmoid(-lambda_t).

Samplers and denoisers work in the equivalent "sigma space" of EDM (Karras et al. 2022): x~ = x_t / alpha_t = x0 +
sigma~ eps with sigma~ = sigma_t / alpha_t = exp(-lambda_t / 2). ``sigma(t)`` and ``t_of_sigma(sigma)`` convert.

Discrete schedules (DDPM, Ho et al. 2020) have ``num_steps = T``: step i in 0..T-1 sits at t = (i + 1) / T and carries
alpha_bar_i = prod_{j <= i} (1 - beta_j); log-SNR is linear in t between grid points. Continuous schedules have
``num_steps = None``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from ...registry import Registry
from .karras import karras_ramp, karras_sigma

LOG_SNR_MIN, LOG_SNR_MAX = -30.0, 30.0  # sigma~ in [3e-7, 3.3e6]: zero terminal SNR stays finite in float64
ZTSNR_SIGMA_MAX = 4096.0  # sigma-space grids of a zero-terminal-SNR schedule start here (alpha_bar = 2^-24)


class NoiseSchedule:
    """Base class: subclasses implement ``log_snr(t)``; everything else derives from it."""

    num_steps: int | None = None
    name: str = "schedule"
    t_min: float = 1e-3  # smallest time a sampler visits before t = 0 (continuous schedules)
    straight_path: bool = False  # x~ / (1 + sigma~) is flow matching's straight path (:mod:`.flow`)

    def log_snr(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def vp_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) in float64; t <= 0 is the clean data, alpha = 1 and sigma = 0 exactly."""
        t = torch.as_tensor(t, dtype=torch.float64)
        lam = self.log_snr(t)
        clean = t <= 0
        return torch.where(clean, 1.0, torch.sigmoid(lam).sqrt()), torch.where(clean, 0.0, torch.sigmoid(-lam).sqrt())

    def alpha_bar(self, t: Tensor) -> Tensor:
        return self.vp_alpha_sigma(t)[0] ** 2

    def sigma(self, t: Tensor) -> Tensor:
        """sigma~(t) = sigma_t / alpha_t = exp(-lambda_t / 2); 0 at t <= 0."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return torch.where(t <= 0, 0.0, (-0.5 * self.log_snr(t)).exp())

    def sigma_range(self) -> tuple[float, float]:
        """(sigma_min, sigma_max) for sigma-space grids (Karras, log-SNR): the noise levels of the cleanest grid
        time and of t = 1. At zero terminal SNR sigma_max is capped at 4096 (alpha_bar = 2^-24, diffusers' choice):
        a grid from sigma = 3e6 would spend its steps where the image is pure noise anyway."""
        t_lo = 1.0 / self.num_steps if self.num_steps else self.t_min
        lo, hi = self.sigma(torch.tensor([t_lo, 1.0], dtype=torch.float64)).tolist()
        return lo, min(hi, ZTSNR_SIGMA_MAX) if self.zero_terminal_snr else hi

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of ``log_snr`` (float64). Generic bisection; subclasses with a closed form override it."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(60):  # log_snr decreases in t
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return (lo + hi) / 2

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        return self.t_of_log_snr(-2 * sigma.log())

    @lru_cache(maxsize=4096)  # noqa: B019 - schedules live as long as their model; samplers revisit a few sigmas
    def t_of_sigma_value(self, sigma: float) -> float:
        """``t_of_sigma`` for one Python float, cached: samplers ask once per step, not once per sample."""
        return float(self.t_of_sigma(torch.tensor(sigma, dtype=torch.float64)))

    def sample_t(self, n: int, *, device=None, generator: torch.Generator | None = None) -> Tensor:
        """Training times: uniform over the T grid points when discrete, uniform on (0, 1] when continuous."""
        return self.from_uniform(torch.rand(n, device=device, generator=generator))

    def from_uniform(self, u: Tensor) -> Tensor:
        """Map u ~ U[0, 1) to a training time: t = 1 - u on (0, 1], snapped up to the T grid when discrete."""
        t = 1.0 - u
        if self.num_steps is not None:
            t = (t * self.num_steps).ceil().clamp(1, self.num_steps) / self.num_steps
        return t

    @property
    def zero_terminal_snr(self) -> bool:
        return float(self.log_snr(torch.ones(1, dtype=torch.float64))) <= LOG_SNR_MIN

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, num_steps={self.num_steps})"


class DiscreteSchedule(NoiseSchedule):
    """A table of alpha_bar_i, i = 0..T-1, at t_i = (i + 1) / T; log-SNR is linear between grid points.
    The last entry may be 0 (zero terminal SNR); its log-SNR is clamped to ``LOG_SNR_MIN``."""

    def __init__(self, alphas_cumprod: Tensor, name: str = "discrete"):
        ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if ab.ndim != 1 or len(ab) < 2:
            raise ValueError(f"alphas_cumprod must be a 1-d table of at least 2 steps, got shape {tuple(ab.shape)}")
        inside = bool((ab[:-1] > 0).all()) and bool((ab >= 0).all()) and bool((ab < 1).all())
        if not inside or not bool((ab[1:] < ab[:-1]).all()):
            raise ValueError("alphas_cumprod must decrease strictly inside (0, 1) (the last entry may be 0)")
        self.alphas_cumprod = ab
        self.log_snr_table = (ab.log() - torch.log1p(-ab)).clamp(LOG_SNR_MIN, LOG_SNR_MAX)
        self.num_steps = len(ab)
        self.name = name

    @property
    def betas(self) -> Tensor:
        prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        return 1 - self.alphas_cumprod / prev

    def log_snr(self, t: Tensor) -> Tensor:
        table = self.log_snr_table.to(t.device)
        pos = (t.double() * self.num_steps - 1).clamp(0, self.num_steps - 1)
        lo = pos.floor().long().clamp(max=self.num_steps - 2)
        return torch.lerp(table[lo], table[lo + 1], pos - lo)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Exact inverse of the piecewise-linear log-SNR, clamped to the grid [1/T, 1]."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        neg = -self.log_snr_table.to(lam.device)  # increasing
        x = (-lam).clamp(float(neg[0]), float(neg[-1]))
        hi = torch.searchsorted(neg, x.contiguous()).clamp(1, self.num_steps - 1)
        lo = hi - 1
        frac = ((x - neg[lo]) / (neg[hi] - neg[lo])).clamp(0, 1)
        return (lo + frac + 1) / self.num_steps


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM linear betas: beta_i = linspace(beta_start, beta_end, T) scaled to T = 1000 (Ho et al. 2020)."""
    scale = 1000 / num_steps
    betas = torch.linspace(beta_start * scale, beta_end * scale, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def cosine_alpha_bar(t: Tensor, s: float = 0.008) -> Tensor:
    """iDDPM cosine: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t + s) / (1 + s)) * pi / 2) (Nichol & Dhariwal 2021)."""
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(torch.zeros_like(t))


def sigmoid_alpha_bar(t: Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    """Sigmoid schedule (Jabri et al. 2022, arXiv 2212.11972): alpha_bar(t) proportional to
    S(end / tau) - S((t (end - start) + start) / tau), S the logistic function, renormalised so alpha_bar(0) = 1."""
    s = lambda u: torch.sigmoid(torch.as_tensor(u, dtype=torch.float64) / tau)  # noqa: E731
    return (s(end) - s(t * (end - start) + start)) / (s(end) - s(start))


def betas_table(alpha_bar_fn, num_steps: int, max_beta: float = 0.999) -> Tensor:
    """Discrete table of a continuous alpha_bar(t), with beta clipped at ``max_beta`` as in iDDPM."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    ab = alpha_bar_fn(t)
    betas = (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, 0)


def cosine_alphas_cumprod(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    return betas_table(lambda t: cosine_alpha_bar(t, s), num_steps, max_beta)


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Lin et al. (WACV 2024), Alg. 1: sqrt(abar) <- (sqrt(abar) - sqrt(abar_T)) sqrt(abar_1) / (sqrt(abar_1) -
    sqrt(abar_T)): keeps the first step, makes the last one pure noise (alpha_bar_T = 0)."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).sqrt()
    return ((a - a[-1]) * a[0] / (a[0] - a[-1])) ** 2


class LinearSchedule(DiscreteSchedule):
    """DDPM linear schedule with T discrete steps."""

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        super().__init__(linear_alphas_cumprod(num_steps, beta_start, beta_end), name="linear")


class CosineSchedule(DiscreteSchedule):
    """iDDPM cosine schedule with T discrete steps."""

    def __init__(self, num_steps: int = 1000, s: float = 0.008):
        super().__init__(cosine_alphas_cumprod(num_steps, s), name="cosine")


class SigmoidSchedule(DiscreteSchedule):
    """Sigmoid schedule with T discrete steps (beta clipped at 0.999)."""

    def __init__(self, num_steps: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0):
        super().__init__(betas_table(lambda t: sigmoid_alpha_bar(t, start, end, tau), num_steps), name="sigmoid")


def _log_snr_of_alpha_bar(ab: Tensor) -> Tensor:
    return (ab.log() - torch.log1p(-ab)).clamp(LOG_SNR_MIN, LOG_SNR_MAX)


class ContinuousLinearSchedule(NoiseSchedule):
    """Continuous-time limit of the DDPM linear schedule (VP-SDE, Song et al. 2021):
    log alpha_bar(t) = -(beta_0 t + (beta_1 - beta_0) t^2 / 2), with beta_0 = 0.1, beta_1 = 20 for T = 1000 defaults."""

    name = "linear"

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0):
        self.beta_0, self.beta_1 = beta_0, beta_1

    def log_snr(self, t: Tensor) -> Tensor:
        t = t.double()
        log_ab = -(self.beta_0 * t + 0.5 * (self.beta_1 - self.beta_0) * t**2)
        return (log_ab - torch.log(-torch.expm1(log_ab))).clamp(LOG_SNR_MIN, LOG_SNR_MAX)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        c = torch.nn.functional.softplus(-torch.as_tensor(lam, dtype=torch.float64))  # -log alpha_bar
        b0, db = self.beta_0, self.beta_1 - self.beta_0
        return ((-b0 + (b0**2 + 2 * db * c).sqrt()) / db).clamp(0, 1)


class ContinuousCosineSchedule(NoiseSchedule):
    """Continuous iDDPM cosine: log-SNR of alpha_bar(t) = f(t) / f(0), floored at ``log_snr_min`` = -20 (about
    where the discrete table with beta <= 0.999 ends): f(1) = 0 would be zero terminal SNR, which eps-prediction
    cannot use (as DPM-Solver stops the cosine schedule at t = 0.9946)."""

    name = "cosine"

    def __init__(self, s: float = 0.008, log_snr_min: float = -20.0):
        self.s, self.log_snr_min = s, log_snr_min

    def log_snr(self, t: Tensor) -> Tensor:
        return _log_snr_of_alpha_bar(cosine_alpha_bar(t.double(), self.s)).clamp(min=self.log_snr_min)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        ab = torch.sigmoid(torch.as_tensor(lam, dtype=torch.float64))
        f0 = math.cos(self.s / (1 + self.s) * math.pi / 2) ** 2
        return (torch.acos((ab * f0).sqrt().clamp(max=1)) * 2 / math.pi * (1 + self.s) - self.s).clamp(0, 1)


class ContinuousSigmoidSchedule(NoiseSchedule):
    """Continuous sigmoid schedule (see :func:`sigmoid_alpha_bar`)."""

    name = "sigmoid"

    def __init__(self, start: float = -3.0, end: float = 3.0, tau: float = 1.0):
        self.start, self.end, self.tau = start, end, tau

    def log_snr(self, t: Tensor) -> Tensor:
        return _log_snr_of_alpha_bar(sigmoid_alpha_bar(t.double(), self.start, self.end, self.tau))


class EDMSchedule(NoiseSchedule):
    """The EDM noise range (Karras et al. 2022) as a schedule: sigma~(t) is the Karras ramp (:mod:`.karras`) at
    1 - t on (0, 1], so a uniform t grid is the Karras discretization. Train it with
    ``training_noise="lognormal"`` and the ``edm`` parameterization."""

    name = "edm"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        self.sigma_min, self.sigma_max, self.rho = sigma_min, sigma_max, rho
        self.t_min = 0.0

    def log_snr(self, t: Tensor) -> Tensor:  # t is the Karras ramp run backwards: t = 1 - r
        return -2 * karras_sigma(1 - t.double(), self.sigma_min, self.sigma_max, self.rho).log()

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        sigma = torch.exp(-torch.as_tensor(lam, dtype=torch.float64) / 2)
        return 1 - karras_ramp(sigma, self.sigma_min, self.sigma_max, self.rho)

    def sigma_range(self) -> tuple[float, float]:
        return self.sigma_min, self.sigma_max


class ShiftedSchedule(NoiseSchedule):
    """log-SNR shifted by a constant: lambda'(t) = lambda(t) + shift (simple diffusion, Hoogeboom et al. 2023).
    ``shift = 2 log(d_ref / d)`` keeps the noise per "reference pixel" of a d x d image what a d_ref x d_ref image
    would see (averaging r x r pixels raises the SNR by r^2); see :func:`resolution_shift`."""

    def __init__(self, base: NoiseSchedule, shift: float):
        self.base, self.shift = base, float(shift)
        self.num_steps, self.t_min, self.straight_path = base.num_steps, base.t_min, base.straight_path
        self.name = f"{base.name}+shift{self.shift:+.3g}"

    def log_snr(self, t: Tensor) -> Tensor:
        return (self.base.log_snr(t) + self.shift).clamp(LOG_SNR_MIN, LOG_SNR_MAX)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        return self.base.t_of_log_snr(torch.as_tensor(lam, dtype=torch.float64) - self.shift)


def resolution_shift(resolution: int, reference: int) -> float:
    """The log-SNR shift 2 log(reference / resolution) for a ``resolution``-sized level of a schedule designed for
    ``reference`` (negative, i.e. noisier, for larger images)."""
    if resolution < 1 or reference < 1:
        raise ValueError(f"resolutions must be >= 1, got resolution={resolution}, reference={reference}")
    return 2 * math.log(reference / resolution)


class ZeroTerminalSNRSchedule(NoiseSchedule):
    """Zero terminal SNR for a continuous schedule (Lin et al. 2024): sqrt(abar(t)) is shifted and rescaled so that
    abar(0) = 1 is kept and abar(1) = 0. Discrete schedules rescale their table instead (:func:`build_schedule`)."""

    def __init__(self, base: NoiseSchedule):
        self.base, self.num_steps, self.t_min = base, base.num_steps, base.t_min
        self.name = f"{base.name}+ztsnr"
        self.a_end = float(base.vp_alpha_sigma(torch.ones(1))[0])

    def log_snr(self, t: Tensor) -> Tensor:
        a = (self.base.vp_alpha_sigma(t)[0] - self.a_end) / (1 - self.a_end)
        return _log_snr_of_alpha_bar(a.clamp(min=0) ** 2)


class ScheduleBuilder:
    """What a schedule name stands for: ``build(num_steps, zero_terminal_snr, log_snr_shift, options, resolution)``
    -> a :class:`NoiseSchedule`. ``num_steps`` = T for a discrete schedule, ``None`` or 0 for continuous time;
    ``zero_terminal_snr`` rescales it so t = 1 is pure noise; ``log_snr_shift`` adds a constant to its log-SNR
    (:func:`resolution_shift`); ``options`` are the schedule's own settings (``schedule_options``); ``resolution`` is
    the level's grid size. A new schedule is one builder (or a subclass) registered in :data:`SCHEDULES`."""

    def build(self, num_steps, zero_terminal_snr, log_snr_shift, options, resolution) -> NoiseSchedule:
        raise NotImplementedError


class VPBuilder(ScheduleBuilder):
    """A variance-preserving schedule, discrete (T steps) or continuous, optionally at zero terminal SNR."""

    def __init__(self, name: str, discrete_cls, continuous_cls):
        self.name, self.discrete_cls, self.continuous_cls = name, discrete_cls, continuous_cls

    def build(self, num_steps, zero_terminal_snr, log_snr_shift, options, resolution) -> NoiseSchedule:
        if options:
            raise ValueError(f"schedule_options {sorted(options)} are given, but the {self.name} schedule takes none")
        if num_steps:
            schedule = self.discrete_cls(num_steps)
            if zero_terminal_snr:
                schedule = DiscreteSchedule(rescale_zero_terminal_snr(schedule.alphas_cumprod), f"{self.name}+ztsnr")
        else:
            schedule = self.continuous_cls()
            if zero_terminal_snr:
                schedule = ZeroTerminalSNRSchedule(schedule)
        return ShiftedSchedule(schedule, log_snr_shift) if log_snr_shift else schedule


class EDMBuilder(ScheduleBuilder):
    """The EDM noise range, always continuous."""

    def build(self, num_steps, zero_terminal_snr, log_snr_shift, options, resolution) -> NoiseSchedule:
        if options:
            raise ValueError(f"schedule_options {sorted(options)} are given, but the edm schedule takes none")
        if zero_terminal_snr:
            raise ValueError("the edm schedule ends at sigma_max; zero_terminal_snr does not apply to it")
        return ShiftedSchedule(EDMSchedule(), log_snr_shift) if log_snr_shift else EDMSchedule()


# ve (NCSN's geometric levels) registers itself in :mod:`.ve`, flow (the straight path) in :mod:`.flow`
SCHEDULES: Registry[ScheduleBuilder] = Registry("noise schedule")
SCHEDULES.register("linear", VPBuilder("linear", LinearSchedule, ContinuousLinearSchedule))
SCHEDULES.register("cosine", VPBuilder("cosine", CosineSchedule, ContinuousCosineSchedule))
SCHEDULES.register("sigmoid", VPBuilder("sigmoid", SigmoidSchedule, ContinuousSigmoidSchedule))
SCHEDULES.register("edm", EDMBuilder())


def build_schedule(
    name: str,
    num_steps: int | None = 1000,
    *,
    zero_terminal_snr: bool = False,
    log_snr_shift: float = 0.0,
    options: dict | None = None,
    resolution: int | None = None,
) -> NoiseSchedule:
    """The registered schedule ``name`` (:data:`SCHEDULES`; see :class:`ScheduleBuilder` for the arguments)."""
    return SCHEDULES.lookup(name).build(num_steps, zero_terminal_snr, log_snr_shift, options, resolution)


def q_sample(x0: Tensor, t: Tensor, schedule: NoiseSchedule, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Forward noising q(x_t | x0): returns (x_t, eps)."""
    eps = torch.randn_like(x0) if noise is None else noise
    alpha, sigma = (a.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1))) for a in schedule.vp_alpha_sigma(t))
    return alpha * x0 + sigma * eps, eps
