"""Quality and cost of one model over a grid of samplers x step counts (library side of ``evaluate``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from tqdm.auto import tqdm

from ..diffusion import steps_for_nfe
from ..engine import GenerativeModel
from ..engine.wrappers import SamplingWrapper
from .features import FeatureExtractor, extract
from .image_metrics import image_metrics
from .quality import quality_metrics
from .sampling import sample_with_cost


def evaluate_grid(
    model: GenerativeModel,
    extractor: FeatureExtractor,
    real: Tensor,
    samplers: list[str | list[str]],
    steps: list[int | list[int]],
    num_samples: int,
    batch_size: int,
    seed: int = 0,
    kid_subset_size: int = 1000,
    progress: bool = True,
    nfe_budgets: bool = False,
    discretization: str | None = None,
    sampler_options: dict | None = None,
    wrappers: Sequence[SamplingWrapper] = (),
    metrics: Sequence[str] = (),
    real_images: Tensor | None = None,
    any_sampler: bool = False,
) -> list[dict]:
    """One row per (sampler, steps): cost (:class:`~pyramid_dm.eval.sampling.SamplingCost`) and quality
    (FID/KID/precision/recall in ``extractor``'s feature space against the ``real`` features). With ``nfe_budgets``
    the ``steps`` are NFE budgets instead, turned into each sampler's step count (Heun: (NFE + 1) // 2; PC with k
    corrector steps: NFE // (1 + k)). ``sampler_options`` go to every sampler (e.g. ``snr``, ``corrector_steps``);
    ``wrappers`` (:mod:`pyramid_dm.engine.wrappers`: guidance, classifier guidance, a step policy costed per width)
    wrap every run, and each row records what they describe (``guidance``, ``classifier_scale``, ...). ``metrics``
    names image metrics (:data:`~pyramid_dm.eval.image_metrics.IMAGE_METRICS`: ``swd``, ``spectrum``) computed
    against ``real_images`` besides the feature metrics. ``any_sampler``: samplers made for another kind of model
    than the checkpoint's run instead of being refused (:meth:`.Objective.check_sampling`)."""
    rows, sampler_options = [], dict(sampler_options or {})
    grid = [(s, steps_for_nfe(s, n, **sampler_options) if nfe_budgets else n) for s in samplers for n in steps]
    for sampler, n in tqdm(grid, desc="evaluate", disable=not progress or len(grid) == 1):
        options = {
            "discretization": discretization,
            "wrappers": wrappers,
            "any_sampler": any_sampler,
            **sampler_options,
        }
        images, cost = sample_with_cost(model, sampler, n, num_samples, batch_size, seed, progress, **options)
        fake = extract(extractor.to(model.device), images)
        row = cost.as_dict()
        names = [sampler] if isinstance(sampler, str) else list(dict.fromkeys(sampler))  # one per level, or one
        grids = dict.fromkeys(model.plan.grid(name, discretization) for name in names)
        row.update(sampler="/".join(names), discretization="/".join(grids), guidance=1.0, classifier_scale=None)
        for wrapper in wrappers:
            row.update(wrapper.describe())
        row.update(**sampler_options)
        row.update(num_samples=len(images), num_real=len(real))
        row.update(quality_metrics(real, fake, extractor.name, kid_subset_size))
        if metrics:
            row.update(image_metrics(metrics, real_images, images, seed))
        rows.append(row)
    return rows
