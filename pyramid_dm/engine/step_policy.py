"""Width policies over the noise level: which width of a slimmable network (:mod:`pyramid_dm.nets.slimmable`) runs at
each denoiser call (step-aware diffusion, DDSM: Yang et al., ICLR 2024, arXiv 2310.03337).

DDSM indexes its strategy by the integer timestep of a 1000-step ancestral sampler, so it serves that sampler only.
Here a level's policy is piecewise constant in the log-SNR lambda = -2 ln sigma~ of the call: breakpoints
lambda_1 < ... < lambda_K and K + 1 widths, ``widths[k]`` on [lambda_k, lambda_{k+1}) (``widths[0]`` the noisiest
calls), so one policy serves every sampler, grid and step count. DDSM's own genome (one width per step of one sampler
and step count) is the ``per_step`` kind: its breakpoints lie halfway (in log-SNR) between the budget's grid points,
and it refuses another budget. A pyramid has one policy per level.

A policy is applied by wrapping the denoiser (:class:`PolicyDenoiser`), so every sampler, guidance and the pyramid's
levels use it unchanged. A width may also be the name of another model (``models``: name -> checkpoint), which then
runs those calls: a separately trained small model for the noisy steps and the full one after, as T-Stitch does
(Pan et al. 2024), in the same interface; the models must share data and schedule (checked where they are loaded).

On disk a policy is a small versioned JSON file (:meth:`StepPolicy.save`) that records the model it
was searched for (checkpoint SHA-256, widths, level shapes), the sampler budget and what was measured for it.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..diffusion.parameterization import DenoiserFn
from ..nets.slimmable import use_width

POLICY_VERSION = 1
KINDS = ("log_snr", "per_step")


def log_snr(sigma: float) -> float:
    """lambda = -2 ln sigma~ (+inf at sigma = 0)."""
    return math.inf if sigma <= 0 else -2.0 * math.log(sigma)


@dataclass
class LevelPolicy:
    """One level's widths over log-SNR: ``widths[k]`` on [breakpoints[k-1], breakpoints[k])."""

    breakpoints: list[float]
    widths: list[float | str]  # a width multiplier, or the name of another model (StepPolicy.models)
    step_widths: list[float] | None = None  # per_step: one width per step of the budget (DDSM's genome)

    def __post_init__(self):
        self.breakpoints = [float(b) for b in self.breakpoints]
        self.widths = [w if isinstance(w, str) else float(w) for w in self.widths]
        if len(self.widths) != len(self.breakpoints) + 1:
            raise ValueError(f"{len(self.breakpoints)} breakpoints need {len(self.breakpoints) + 1} widths")
        if not all(math.isfinite(b) for b in self.breakpoints):
            raise ValueError(f"breakpoints must be finite numbers (log-SNR), got {self.breakpoints}")
        if sorted(self.breakpoints) != self.breakpoints:
            raise ValueError(f"breakpoints must increase (log-SNR), got {self.breakpoints}")
        bad = [w for w in self.widths if not isinstance(w, str) and not 0 < w <= 1]
        if bad:
            raise ValueError(f"widths must lie in (0, 1], got {bad}")

    def width(self, sigma: float) -> float | str:
        return self.widths[bisect.bisect_right(self.breakpoints, log_snr(sigma))]

    @classmethod
    def per_step(cls, step_widths: list[float], sigmas: list[float]) -> LevelPolicy:
        """One width per step of a grid ``sigmas`` (noisiest first, len(step_widths) + 1 points, the last may be 0):
        step i's calls (at sigma_i, and a second-order corrector's at sigma_{i+1}) lie below the midpoint."""
        lams = [log_snr(s) for s in sigmas[: len(step_widths)]]
        breaks = [(a + b) / 2 for a, b in zip(lams, lams[1:])]
        return cls(breaks, list(step_widths), list(step_widths))


@dataclass
class StepPolicy:
    """A width policy per level plus what it was made for and what was measured (see the module docstring)."""

    levels: list[LevelPolicy]
    kind: str = "log_snr"
    name: str = ""
    model: dict = field(default_factory=dict)  # checkpoint_sha256, widths, level_shapes
    budget: dict | None = None  # samplers, steps (per level): required for per_step, informative otherwise
    measured: dict = field(default_factory=dict)  # fid_proxy, gflops_per_sample, ms_per_sample, ...
    models: dict = field(default_factory=dict)  # name -> checkpoint of another model named among the widths
    engines: dict = field(default_factory=dict, repr=False, compare=False)  # name -> its loaded model (not saved)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {list(KINDS)}")
        unknown = sorted({w for lv in self.levels for w in lv.widths if isinstance(w, str)} - set(self.models))
        if unknown:
            raise ValueError(f"widths {unknown} name no model of the policy's models {sorted(self.models)}")
        if self.kind == "per_step" and not self.budget:
            raise ValueError("a per_step policy needs the budget (samplers, steps) it was made for")

    @classmethod
    def uniform(cls, width: float, num_levels: int = 1) -> StepPolicy:
        return cls([LevelPolicy([], [width]) for _ in range(num_levels)], name=f"uniform {width:g}")

    @property
    def widths(self) -> list[float]:
        """The supernet widths the policy uses (not the other models)."""
        return sorted({w for lv in self.levels for w in lv.widths if not isinstance(w, str)}, reverse=True)

    def wrap(self, denoiser: DenoiserFn, level: int) -> PolicyDenoiser:
        """``denoiser`` run at this policy's widths; calls named for another model run its ``engines[name]``."""
        missing = sorted(set(self.models) - set(self.engines))
        if missing:
            raise ValueError(f"the policy's models {missing} are not loaded (StepPolicy.engines)")
        others = {name: engine.denoiser(level) for name, engine in self.engines.items()}
        return PolicyDenoiser(denoiser, self.levels[level], others)

    # ---- checks against a model and a budget --------------------------------------------------------------------
    def check_model(
        self, widths: list[float] | None, level_shapes: list, sha256: str | None, where: str, ignore_hash=False
    ) -> None:
        """ValueError naming ``where`` (the policy file) unless the policy fits a model with these ``widths`` (None:
        not slimmable), level shapes and checkpoint hash (``ignore_hash``: not checked)."""
        if widths is None and self.widths not in ([], [1.0]):
            raise ValueError(
                f"{where}: the checkpoint's network is not slimmable (trained without model.init_args.step_aware), "
                "so it has no widths for a step policy"
            )
        widths = widths or [1.0]
        unknown = [w for w in self.widths if w not in widths]
        if unknown:
            raise ValueError(f"{where}: widths {unknown} are not among the checkpoint's widths {widths}")
        if len(self.levels) != len(level_shapes):
            raise ValueError(
                f"{where}: the policy has {len(self.levels)} level(s), the checkpoint's model {len(level_shapes)}"
            )
        recorded = self.model.get("level_shapes")
        if recorded is not None and [list(s) for s in recorded] != [list(s) for s in level_shapes]:
            raise ValueError(f"{where}: searched for levels {recorded}, the checkpoint's are {list(level_shapes)}")
        want = self.model.get("checkpoint_sha256")
        if want and sha256 and want != sha256 and not ignore_hash:
            raise ValueError(
                f"{where}: searched for the checkpoint with SHA-256 {want[:12]}..., this one is {sha256[:12]}... "
                "(other weights); pass --ignore_policy_hash to use it anyway"
            )

    def check_budget(self, samplers: list[str], steps: list[int], where: str) -> None:
        """A per_step policy serves only the sampler and step count it was made for."""
        if self.kind != "per_step":
            return
        want = (list(self.budget["samplers"]), [int(n) for n in self.budget["steps"]])
        if (list(samplers), [int(n) for n in steps]) != want:
            raise ValueError(
                f"{where}: a per_step policy made for samplers {want[0]} x steps {want[1]} cannot run "
                f"{list(samplers)} x {list(steps)}; use that budget, or a log_snr policy"
            )

    # ---- files ----------------------------------------------------------------------------------------------------
    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("engines")
        return {"format": "pyramid_dm.step_policy", "version": POLICY_VERSION, **d}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> StepPolicy:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"step policy {str(path)!r} does not exist") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"step policy {str(path)!r} is not readable JSON ({e})") from None
        if not isinstance(d, dict) or d.get("format") != "pyramid_dm.step_policy":
            raise ValueError(f"step policy {str(path)!r} is not a pyramid_dm step policy (no format key)")
        if d.get("version") != POLICY_VERSION:
            raise ValueError(f"step policy {str(path)!r} has version {d.get('version')}; this reads {POLICY_VERSION}")
        try:
            levels = [LevelPolicy(**lv) for lv in d["levels"]]
            return cls(
                levels,
                d["kind"],
                d.get("name", ""),
                d.get("model", {}),
                d.get("budget"),
                d.get("measured", {}),
                d.get("models", {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"step policy {str(path)!r}: {e}") from None


def resolve_policy(text: str | None, num_levels: int) -> StepPolicy | None:
    """``--step_policy``: a policy file, or one width for every call (``0.5``)."""
    if text is None:
        return None
    try:
        width = float(text)
    except ValueError:
        return StepPolicy.load(text)
    if not 0 < width <= 1:
        raise ValueError(f"--step_policy {text}: a uniform width must lie in (0, 1]")
    return StepPolicy.uniform(width, num_levels)


class PolicyDenoiser:
    """A denoiser run at its policy's width for each call's sigma. ``calls`` counts sample-calls per width (a batch
    of B is B; classifier-free guidance's batched 2B is 2B), from which cost accounting weighs FLOPs per width.
    Calls whose samples have different sigmas run one sub-batch per width."""

    def __init__(self, denoiser: DenoiserFn, policy: LevelPolicy, others: dict[str, DenoiserFn] | None = None):
        self.denoiser, self.policy, self.others = denoiser, policy, others or {}
        self.calls: Counter[float | str] = Counter()

    def _run(self, width, x: Tensor, sigma, **cond) -> Tensor:
        if isinstance(width, str):  # another model's calls (T-Stitch)
            return self.others[width](x, sigma, **cond)
        with use_width(width):
            return self.denoiser(x, sigma, **cond)

    def __call__(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        sigma_t = torch.as_tensor(sigma)
        values = sigma_t.reshape(-1).tolist() if sigma_t.numel() > 1 else [float(sigma_t)]
        widths = [self.policy.width(s) for s in values]
        if len(set(widths)) == 1:
            self.calls[widths[0]] += x.shape[0]
            return self._run(widths[0], x, sigma, **cond)
        out = torch.empty_like(x)
        for w in sorted(set(widths), key=str):
            idx = torch.tensor([i for i, v in enumerate(widths) if v == w], device=x.device)
            sub = {
                k: v[idx] if isinstance(v, Tensor) and v.ndim and v.shape[0] == x.shape[0] else v
                for k, v in cond.items()
            }
            self.calls[w] += len(idx)
            out[idx] = self._run(w, x[idx], sigma_t.reshape(-1)[idx.cpu()], **sub)
        return out
