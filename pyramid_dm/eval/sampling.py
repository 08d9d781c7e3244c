"""Generate evaluation samples and measure what they cost: NFE, FLOPs per call and per sample (decoder included),
wall-clock, images/s, peak memory and GPU energy. Works with any model that has ``sample``, ``denoiser``,
``decode``, ``latent_shape`` and ``sample_labels`` (every :class:`~pyramid_dm.models.DiffusionModel`)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..diffusion import CountingDenoiser
from ..images import to_uint8
from .cost import EnergyMeter, PeakMemory, count_flops, count_params


@dataclass
class SamplingCost:
    sampler: str
    steps: int
    nfe: float  # network calls per sample
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
def per_sample_flops(model) -> tuple[float, float]:
    """(network FLOPs per call, decoder FLOPs) for one sample, counted by ``torch.utils.flop_counter``."""
    z = torch.zeros((1, *model.latent_shape), device=model.device)
    sigma = torch.tensor(1.0, dtype=torch.float64)
    cond = model.conditioning(model.sample_labels(0, 1))
    denoiser = model.denoiser(ema=True)
    return float(count_flops(lambda: denoiser(z, sigma, **cond))), float(count_flops(lambda: model.decode(z)))


@torch.no_grad()
def generate(
    model,
    sampler: str,
    steps: int,
    batch_indices: list[int],
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    labels: Tensor | None = None,
    ema: bool = True,
    **options,
) -> tuple[Tensor, int, float]:
    """Samples for the given evaluation batches (quantized like real PNGs, on the CPU), the network calls per batch
    (NFE) and the seconds spent generating. ``labels`` (one per sample) replaces the model's classes in turn; the
    batch they run out in is drawn short."""
    out, nfe, seconds = [], 0, 0.0
    for b in tqdm(batch_indices, desc=f"{sampler} {steps} steps", disable=not progress, leave=False):
        counter = CountingDenoiser(model.denoiser(ema=ema))
        if labels is None:
            batch_labels, n = model.sample_labels(b * batch_size, batch_size), batch_size
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
            denoiser=counter,
            **options,
        )
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        seconds += time.perf_counter() - start
        out.append(quantize(images).cpu())
        nfe = counter.nfe
    return torch.cat(out), nfe, seconds


def sample_with_cost(
    model, sampler: str, steps: int, num_samples: int, batch_size: int, seed: int = 0, progress: bool = True, **options
) -> tuple[Tensor, SamplingCost]:
    """``num_samples`` images (rounded up to whole batches) and the measured cost of drawing them."""
    batch_size = min(batch_size, num_samples)
    batches = list(range(-(-num_samples // batch_size)))
    per_call, decoder = per_sample_flops(model)
    with PeakMemory(model.device) as mem, EnergyMeter(model.device) as energy:
        images, nfe, seconds = generate(model, sampler, steps, batches, batch_size, seed, progress, **options)
    n = len(images)
    cost = SamplingCost(
        sampler=sampler,
        steps=steps,
        nfe=nfe,
        params=count_params(model.denoiser(ema=True).net) + _first_stage_params(model),
        gflops_per_call=per_call / 1e9,
        decoder_gflops=decoder / 1e9,
        gflops_per_sample=(nfe * per_call + decoder) / 1e9,
        batch_size=batch_size,
        seconds_per_sample=seconds / n,
        images_per_s=n / seconds,
        peak_mem_mb=mem.peak_mb,
        energy_j_per_sample=None if energy.joules is None else energy.joules / n,
        device=str(model.device),
    )
    return images[:num_samples], cost


def _first_stage_params(model) -> int:
    stage = getattr(model, "first_stage", None)
    return count_params(stage) if isinstance(stage, torch.nn.Module) else 0
