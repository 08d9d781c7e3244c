"""Cost accounting: FLOPs (counted by :mod:`pyramid_dm.flops`), parameters, peak memory and GPU energy."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..flops import count_flops, training_flops

__all__ = ["EnergyMeter", "PeakMemory", "count_flops", "count_params", "training_flops"]


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class PeakMemory:
    """Peak memory inside a ``with`` block: CUDA max allocated on a GPU, else the process's peak resident set.

    The CPU figure is Linux's VmHWM, reset at entry through ``/proc/self/clear_refs`` where the kernel allows it
    (otherwise it is the peak since the process started, and ``cpu_peak_is_lifetime`` is True).
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self.cpu_peak_is_lifetime = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.cpu_peak_is_lifetime = True
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = _vm_hwm_mb()


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class EnergyMeter:
    """GPU energy inside a ``with`` block from NVML's total-energy counter (Volta and newer), in joules.
    ``joules`` stays None on a CPU, without ``nvidia-ml-py``, or where the GPU does not report energy."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.joules: float | None = None
        self._handle = None
        if self.device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception:  # no NVML library, no permission, or an unsupported GPU: energy is simply not reported
            self._handle = None

    def _read_mj(self) -> int | None:
        try:
            return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception:
            return None

    def __enter__(self) -> EnergyMeter:
        if self._handle is not None:
            torch.cuda.synchronize(self.device)
            self._start = self._read_mj()
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None and self._start is not None:
            torch.cuda.synchronize(self.device)
            end = self._read_mj()
            self.joules = None if end is None else (end - self._start) / 1000
