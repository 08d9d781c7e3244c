"""Callbacks for cross-cutting work: sample grids, sample quality (FID/KID), reconstructions and throughput."""

from .evaluation import SampleQuality
from .reconstructions import ReconstructionGrid, ReconstructionQuality
from .samples import SampleGrid
from .throughput import ImageThroughput

__all__ = ["ImageThroughput", "ReconstructionGrid", "ReconstructionQuality", "SampleGrid", "SampleQuality"]
