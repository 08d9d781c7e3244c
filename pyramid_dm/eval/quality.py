"""Sample quality from features: FID (Heusel et al. 2017), KID (Binkowski et al. 2018) through torchmetrics, and
improved precision/recall (Kynkaanniemi et al. 2019, k-NN manifolds, k = 3).

Features are computed elsewhere (:mod:`pyramid_dm.eval.features`) and fed to torchmetrics through an identity
"feature network", so real features can be cached and fake features gathered from several ranks first. The metrics
never sync on ``compute()``: under DDP only rank 0 computes them, and a torchmetrics sync there would wait forever
for the other ranks.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


class _Given(nn.Module):
    """torchmetrics "feature network" for inputs that already are features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def fid(real: Tensor, fake: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two (N, d) feature sets."""
    metric = FrechetInceptionDistance(feature=_Given(real.shape[1]), sync_on_compute=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kid(real: Tensor, fake: Tensor, subset_size: int = 1000, subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (unbiased MMD^2, cubic polynomial kernel): mean and std over random subsets."""
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # "will save all extracted features": we hand it features, that is the point
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=_Given(real.shape[1]), subsets=subsets, subset_size=size, sync_on_compute=False
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets from the global generator
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _knn_radii(features: Tensor, k: int) -> Tensor:
    dist = torch.cdist(features, features)
    return dist.kthvalue(k + 1, dim=1).values  # k + 1: the point itself is its own nearest neighbour


def _coverage(reference: Tensor, radii: Tensor, queries: Tensor, chunk: int = 1024) -> float:
    """Fraction of ``queries`` inside at least one reference k-NN ball."""
    inside = [
        (torch.cdist(queries[i : i + chunk], reference) <= radii[None]).any(dim=1)
        for i in range(0, len(queries), chunk)
    ]
    return torch.cat(inside).float().mean().item()


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, max_points: int = 10000) -> tuple[float, float]:
    """Improved precision (fake samples on the real manifold) and recall (real samples on the fake manifold)."""
    real, fake = real[:max_points].float(), fake[:max_points].float()
    precision = _coverage(real, _knn_radii(real, k), fake)
    recall = _coverage(fake, _knn_radii(fake, k), real)
    return precision, recall


def quality_metrics(real: Tensor, fake: Tensor, space: str, kid_subset_size: int = 1000) -> dict[str, float]:
    """All metrics, named after the feature space (``fid_fmnist_clf``, ``kid_inception``, ...)."""
    kid_mean, kid_std = kid(real, fake, kid_subset_size)
    precision, recall = precision_recall(real, fake)
    return {
        f"fid_{space}": fid(real, fake),
        f"kid_{space}": kid_mean,
        f"kid_{space}_std": kid_std,
        f"precision_{space}": precision,
        f"recall_{space}": recall,
    }
