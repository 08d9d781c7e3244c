"""Dense peak TFLOP/s of GPUs by name, for model-FLOP utilisation (MFU = training FLOPs x steps/s / peak).

Our own table, not Lightning's ``get_available_flops``: Lightning lists the H200 at 2000 bf16 TFLOP/s (the 2:4-sparse
figure, twice the dense peak that MFU is measured against) and finds no entry for the plain "NVIDIA H200" that the
SXM part reports, so its MFU would be halved or missing exactly where our GPU runs are. Numbers are NVIDIA's
datasheet dense figures (SXM parts at their full clock); ``bench train --peak-tflops`` overrides them.
"""

from __future__ import annotations

import torch

# name fragment (lower case, first match wins) -> dense TFLOP/s for bf16, tf32 (fp32 matmuls at "high"), fp32
PEAKS = {
    "h200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "h100 pcie": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "h100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "a100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "l40s": {"bf16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "l4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "4090": {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
    "a10g": {"bf16": 70.0, "tf32": 35.0, "fp32": 31.2},
}


def numeric_mode(dtype: torch.dtype | None) -> str:
    """Which peak a step's matmuls run against: bf16 under autocast, tf32 for fp32 at matmul precision below
    "highest", else fp32."""
    if dtype is torch.bfloat16:
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def peak_tflops(device: torch.device, mode: str, override: float | None = None) -> float | None:
    """The device's dense peak in ``mode`` (None: a CPU, or a GPU not in the table and no ``override``)."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    return next((peaks[mode] for fragment, peaks in PEAKS.items() if fragment in name), None)
