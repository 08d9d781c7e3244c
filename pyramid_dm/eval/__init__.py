"""Evaluation: sample quality (FID/KID/precision/recall in a chosen feature space) and cost accounting."""

from .cost import EnergyMeter, PeakMemory, count_flops, count_params, training_flops
from .evaluate import evaluate_grid
from .features import FeatureExtractor, build_features
from .quality import fid, kid, precision_recall, quality_metrics
from .sampling import SamplingCost, sample_with_cost

__all__ = [
    "EnergyMeter",
    "FeatureExtractor",
    "PeakMemory",
    "SamplingCost",
    "build_features",
    "count_flops",
    "count_params",
    "evaluate_grid",
    "fid",
    "kid",
    "precision_recall",
    "quality_metrics",
    "sample_with_cost",
    "training_flops",
]
