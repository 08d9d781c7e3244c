"""Quality and cost of one model over a grid of samplers x step counts (library side of ``evaluate``)."""

from __future__ import annotations

from torch import Tensor
from tqdm.auto import tqdm

from .features import FeatureExtractor, extract
from .quality import quality_metrics
from .sampling import sample_with_cost


def evaluate_grid(
    model,
    extractor: FeatureExtractor,
    real: Tensor,
    samplers: list[str],
    steps: list[int],
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    kid_subset_size: int = 1000,
    progress: bool = True,
) -> list[dict]:
    """One row per (sampler, steps): cost (:class:`~pyramid_dm.eval.sampling.SamplingCost`) and quality
    (FID/KID/precision/recall in ``extractor``'s feature space against the ``real`` features)."""
    rows = []
    grid = [(s, n) for s in samplers for n in steps]
    for sampler, n in tqdm(grid, desc="evaluate", disable=not progress or len(grid) == 1):
        images, cost = sample_with_cost(model, sampler, n, num_samples, batch_size, seed, progress)
        fake = extract(extractor.to(model.device), images)
        row = cost.as_dict()
        row.update(num_samples=len(images), num_real=len(real))
        row.update(quality_metrics(real, fake, extractor.name, kid_subset_size))
        rows.append(row)
    return rows
