"""Callbacks for cross-cutting work: sample grids and throughput."""

from .samples import SampleGrid
from .throughput import ImageThroughput

__all__ = ["ImageThroughput", "SampleGrid"]
