"""Generate evaluation samples and measure what they cost: NFE, FLOPs per call and per sample (decoder included),
wall-clock, images/s, peak memory and GPU energy. Works with any :class:`~pyramid_dm.engine.GenerativeModel`: an engine
(``load_engine``), or a LightningModule's ``for_sampling()``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..engine import ClassifierGuide, GenerativeModel
from ..engine.wrappers import Count, SamplingWrapper, Widths, find
from ..images import to_uint8
from .cost import EnergyMeter, PeakMemory


@dataclass
class SamplingCost:
    sampler: str
    steps: int
    nfe: float  # network calls per sample (all levels)
    params: int
    gflops_per_call: float  # one network call, one sample
    decoder_gflops: float  # first-stage decoding, one sample
    gflops_per_sample: float  # nfe * per call + decoder
    batch_size: int
    seconds_per_sample: float
    images_per_s: float
    peak_mem_mb: float | None
    energy_j_per_sample: float | None
    device: str
    levels: list[dict] | None = None  # per level of a pyramid: resolution, sampler steps, NFE, GFLOPs per call
    classifier_calls: int = 0  # classifier-guidance gradients per sample (each a classifier forward + backward)
    classifier_gflops_per_call: float = 0.0  # one gradient, one sample (counted in gflops_per_sample)
    step_policy: str | None = None  # the width policy's name (a step-aware supernet), None: full width
    mean_width: float | None = None  # network calls' mean width multiplier under the policy

    def as_dict(self) -> dict:
        return asdict(self)


def batch_generator(seed: int, batch_index: int, device) -> torch.Generator:
    """The noise of evaluation batch ``batch_index`` depends only on (seed, batch_index), never on which rank or how
    many ranks draw it."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + batch_index)


def quantize(images: Tensor) -> Tensor:
    """Round to the 256 levels real images have (they come from PNGs), back in [-1, 1]."""
    return to_uint8(images).float() / 127.5 - 1


@torch.no_grad()
def per_sample_flops(model: GenerativeModel) -> tuple[list[float], float]:
    """(network FLOPs per call at each level, decoder FLOPs) for one sample, counted by ``torch.utils.flop_counter``."""
    return model.flops_per_call(), model.decoder_flops()


@torch.no_grad()
def generate(
    model: GenerativeModel,
    sampler: str,
    steps: int,
    batch_indices: list[int],
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    labels: Tensor | None = None,
    wrappers: Sequence[SamplingWrapper] = (),
    **options,
) -> tuple[Tensor, Count, float]:
    """Samples for the given evaluation batches (quantized like real PNGs, on the CPU), the :class:`Count` of the
    network calls per sample at each level (NFE) and the seconds spent generating. ``labels`` (one per sample)
    replaces the model's classes in turn; the batch they run out in is drawn short. ``wrappers`` (guidance, a step
    policy, ...: :mod:`pyramid_dm.engine.wrappers`) keep what they measured of the last batch; an unconditional
    model guided by a classifier is guided toward the classifier's classes in turn."""
    out, seconds, count = [], 0.0, Count()
    guide = find(wrappers, ClassifierGuide)
    for b in tqdm(batch_indices, desc=f"{sampler} {steps} steps", disable=not progress, leave=False):
        if labels is None:
            batch_labels, n = model.sample_labels(b * batch_size, batch_size), batch_size
            if batch_labels is None and guide is not None:
                batch_labels = guide.labels(b * batch_size, batch_size)
        else:
            batch_labels = labels[b * batch_size : (b + 1) * batch_size]
            n = len(batch_labels)
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        start = time.perf_counter()
        images = model.sample(
            n,
            sampler,
            steps,
            labels=batch_labels,
            generator=batch_generator(seed, b, model.device),
            wrappers=[*wrappers, count],
            **options,
        )
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        seconds += time.perf_counter() - start
        out.append(quantize(images).cpu())
    return torch.cat(out), count, seconds


def network_flops(model: GenerativeModel, nfe: list, per_call: list[float], widths: Widths | None):
    """(network FLOPs per sample, FLOPs per call at each level, mean width): each call at the width it ran at,
    counted by flop_counter at that width (``widths``: the step policy's record), else at full width."""
    if widths is None:
        return sum(k * f for k, f in zip(nfe, per_call)), per_call, None
    calls = [{w: c / widths.num_samples for w, c in per.items()} for per in widths.calls]
    at = {w: model.flops_per_call(width=w) for w in widths.policy.widths}
    at.update({name: other.flops_per_call() for name, other in widths.policy.engines.items()})  # T-Stitch's models
    network = sum(c * at[w][level] for level, per in enumerate(calls) for w, c in per.items())
    own = [(w, c) for per in calls for w, c in per.items() if not isinstance(w, str)]
    mean_width = sum(c * w for w, c in own) / max(sum(c for _, c in own), 1) if own else None
    per_call = [sum(c * at[w][lv] for w, c in calls[lv].items()) / max(nfe[lv], 1) for lv in range(len(nfe))]
    return network, per_call, mean_width


def sample_with_cost(
    model: GenerativeModel,
    sampler: str,
    steps: int,
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    wrappers: Sequence[SamplingWrapper] = (),
    **options,
) -> tuple[Tensor, SamplingCost]:
    """``num_samples`` images (rounded up to whole batches) and the measured cost of drawing them: the network
    calls, at the widths a step policy ran them, plus what the wrappers spent beside them (a classifier's
    gradients)."""
    batch_size = min(batch_size, num_samples)
    batches = list(range(-(-num_samples // batch_size)))
    per_call, decoder = per_sample_flops(model)
    with PeakMemory(model.device) as mem, EnergyMeter(model.device) as energy:
        images, count, seconds = generate(
            model, sampler, steps, batches, batch_size, seed, progress, wrappers=wrappers, **options
        )
    n, nfe = len(images), count.nfe
    total_nfe = sum(nfe)
    widths, guide = find(wrappers, Widths), find(wrappers, ClassifierGuide)
    network, per_call, mean_width = network_flops(model, nfe, per_call, widths)
    extra = sum(w.extra_flops() for w in wrappers)
    levels = None
    if len(nfe) > 1:
        levels = [
            {"level": i, "resolution": model.grid_size(i), "nfe": k, "gflops_per_call": f / 1e9}
            for i, (k, f) in enumerate(zip(nfe, per_call))
        ]
    cost = SamplingCost(
        sampler=sampler,
        steps=steps,
        nfe=total_nfe,
        params=model.num_params(),
        gflops_per_call=network / max(total_nfe, 1) / 1e9,
        decoder_gflops=decoder / 1e9,
        gflops_per_sample=(network + decoder + extra) / 1e9,
        batch_size=batch_size,
        seconds_per_sample=seconds / n,
        images_per_s=n / seconds,
        peak_mem_mb=mem.peak_mb,
        energy_j_per_sample=None if energy.joules is None else energy.joules / n,
        device=str(model.device),
        levels=levels,
        classifier_calls=guide.calls if guide is not None else 0,
        classifier_gflops_per_call=guide.flops_per_call() / 1e9 if guide is not None else 0.0,
        step_policy=None if widths is None else widths.describe()["step_policy"],
        mean_width=mean_width,
    )
    return images[:num_samples], cost
