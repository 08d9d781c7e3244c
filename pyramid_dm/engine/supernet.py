"""Supernet training of a slimmable network (DDSM's ``--sandwich``; the sandwich rule of Yu & Huang, ICCV 2019).

Each optimiser step runs, on the same batch, the largest width, the smallest and ``sandwich - 2`` middle widths drawn
at random, each with its own times and noise; their losses are summed, so one backward accumulates every width's
gradient (DDSM calls backward per width; the sum is the same gradient). With ``distill`` the smaller widths also
regress the largest width's detached output on their own input (in-place distillation; DDSM does not).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..nets.slimmable import check_widths


@dataclass(frozen=True)
class SandwichRule:
    widths: tuple[float, ...]  # largest first
    sandwich: int = 3
    distill: bool = False

    @classmethod
    def from_options(cls, options: dict | None) -> SandwichRule | None:
        """``model.step_aware`` ({widths, sandwich, distill}) or None (a plain network)."""
        if options is None:
            return None
        unknown = set(options) - {"widths", "sandwich", "distill"}
        if unknown:
            raise ValueError(f"step_aware: unknown keys {sorted(unknown)} (known: widths, sandwich, distill)")
        widths = tuple(check_widths(options.get("widths", (1.0, 0.75, 0.5, 0.25)), "step_aware.widths"))
        sandwich = int(options.get("sandwich", 3))
        if sandwich < min(2, len(widths)):
            raise ValueError(f"step_aware.sandwich must be >= 2 (largest and smallest), got {sandwich}")
        if sandwich > len(widths) + 8:
            raise ValueError(
                f"step_aware.sandwich must be at most {len(widths) + 8} (the {len(widths)} widths plus 8 repeated "
                f"middle draws), got {sandwich}"
            )
        return cls(widths, sandwich if len(widths) > 1 else 1, bool(options.get("distill", False)))

    @property
    def middle(self) -> tuple[float, ...]:
        return self.widths[1:-1]

    def draw(self, generator: torch.Generator | None = None) -> list[float]:
        """This step's widths: largest, smallest, then ``sandwich - 2`` random middle ones (with replacement)."""
        if len(self.widths) == 1:
            return [self.widths[0]]
        out = [self.widths[0], self.widths[-1]]
        pool = self.middle or (self.widths[-1],)
        for _ in range(self.sandwich - 2):
            out.append(pool[int(torch.randint(len(pool), (), generator=generator))])
        return out

    def expected_flops(self, flops_at: Callable[[float], float], forward_at: Callable[[float], float]) -> float:
        """Expected FLOPs of one step from ``flops_at(w)`` (forward + backward at width w) and ``forward_at(w)``
        (forward only: the teacher's extra pass per smaller width with ``distill``)."""
        if len(self.widths) == 1:
            return flops_at(self.widths[0])
        pool = self.middle or (self.widths[-1],)
        middle = sum(flops_at(w) for w in pool) / len(pool)
        total = flops_at(self.widths[0]) + flops_at(self.widths[-1]) + (self.sandwich - 2) * middle
        if self.distill:
            total += (self.sandwich - 1) * forward_at(self.widths[0])
        return total
