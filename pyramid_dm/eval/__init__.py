"""Evaluation: cost accounting (and, later, sample quality)."""

from .cost import training_flops

__all__ = ["training_flops"]
