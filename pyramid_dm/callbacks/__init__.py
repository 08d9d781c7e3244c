"""Callbacks for cross-cutting work: sample grids, sample quality (FID/KID) and throughput."""

from .evaluation import SampleQuality
from .samples import SampleGrid
from .throughput import ImageThroughput

__all__ = ["ImageThroughput", "SampleGrid", "SampleQuality"]
