"""Radially averaged power-spectrum error between two image sets, per frequency band.

The mean power spectrum |FFT2(x)|^2 / (H W) of each set (all images and channels), averaged over rings of equal radial
frequency k (cycles per image, k = 1 .. side / 2, corners beyond the Nyquist circle left out), compared on a log
scale: the error of a ring is |10 log10(P_fake(k) / P_real(k))| in dB. Generated images that miss fine detail show it
as a deficit at high k, which a pooled feature distance hides (Durall, Keuper & Keuper, "Watch your up-convolution",
CVPR 2020, measured GAN artefacts this way; Dzanic et al., NeurIPS 2020, likewise). Bands are octaves matched to the
Laplacian levels of :mod:`.swd`: the band named by a side s holds k in (s/4, s/2] of the full image (the finest
band the full side), the coarsest named band everything below. Keys ``spectrum_<side>`` (mean dB error of the band's
rings) and ``spectrum_mean`` (over all rings).
"""

from __future__ import annotations

import torch
from torch import Tensor


def radial_spectrum(images: Tensor) -> Tensor:
    """(side // 2,) mean power at radial frequency k = 1 .. side // 2 of square images (N, C, side, side)."""
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"the power spectrum is taken of square images, got {h}x{w}")
    x = images.double()
    x = x - x.mean(dim=(2, 3), keepdim=True)
    power = torch.fft.fft2(x).abs().square().mean(dim=(0, 1)) / (h * w)  # (h, w)
    f = torch.fft.fftfreq(h, d=1.0 / h).double()
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt().round().long()
    k = torch.arange(1, h // 2 + 1)
    mask = radius[None] == k[:, None, None]  # (k, h, w)
    return (power[None] * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))


def bands(side: int, min_size: int = 16) -> dict[int, tuple[int, int]]:
    """Octave bands ``{level side: (k_lo, k_hi)}`` (inclusive, finest first) matching the Laplacian levels."""
    out, s = {}, side
    while s // 2 >= min_size and s % 2 == 0:
        out[s] = (s // 4 + 1, s // 2)
        s //= 2
    out[s] = (1, s // 2)
    return out


def spectrum_error(real: Tensor, fake: Tensor, min_size: int = 16) -> dict[str, float]:
    """Per-band mean |dB| error of ``fake``'s radially averaged power spectrum against ``real``'s."""
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"spectra compare images of one shape: {tuple(real.shape[1:])} and {tuple(fake.shape[1:])}")
    eps = 1e-12
    db = 10 * (radial_spectrum(fake) + eps).log10() - 10 * (radial_spectrum(real) + eps).log10()
    err = db.abs()
    out = {f"spectrum_{s}": float(err[lo - 1 : hi].mean()) for s, (lo, hi) in bands(real.shape[-1], min_size).items()}
    out["spectrum_mean"] = float(err.mean())
    return out
