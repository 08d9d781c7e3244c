"""The photo-crops source (disjoint train/val regions, seeded, scaled) and the download-free scale metrics (SWD per
Laplacian level, power-spectrum error per band), against closed forms and written-out references."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import run_main
from scipy import ndimage

from pyramid_dm.data.photos import PHOTOS, load_photo, photo_crops, regions
from pyramid_dm.data.sources import SourceError
from pyramid_dm.eval.spectrum import radial_spectrum, spectrum_error
from pyramid_dm.eval.swd import laplacian_pyramid, pyr_down, pyr_up, sliced_wasserstein, swd


def as_batch(examples) -> torch.Tensor:
    return torch.tensor(np.stack([e.load() for e in examples])).permute(0, 3, 1, 2).float() / 127.5 - 1


@pytest.fixture(scope="module")
def crops():
    """Three disjoint sets of 64 px photo crops: two training draws (one distribution) and the validation crops."""
    a = photo_crops(64, 300, 300, seed=0)
    b = photo_crops(64, 300, 10, seed=1)
    return as_batch(a.splits["train"]), as_batch(b.splits["train"]), as_batch(a.splits["val"])


# ---- the photos source ----------------------------------------------------------------------------------------------


def test_photo_crops_never_show_a_val_pixel_in_training():
    size, scale = 64, (1.0, 2.0)
    images = photo_crops(size, 400, 100, scale, val_fraction=0.25, seed=3)
    seen = {name: np.zeros(load_photo(name).shape[:2], bool) for name in PHOTOS}
    parse = lambda origin: (
        origin.split("[")[0],
        *[tuple(map(int, r.split(":"))) for r in origin[:-1].split("[")[1].split(", ")],
    )  # noqa: E731
    for ex in images.splits["train"]:
        name, (y0, y1), (x0, x1) = parse(ex.origin)
        seen[name][y0:y1, x0:x1] = True
        assert size * scale[0] <= y1 - y0 <= size * scale[1] and y1 - y0 == x1 - x0
    for ex in images.splits["val"]:
        name, (y0, y1), (x0, x1) = parse(ex.origin)
        assert not seen[name][y0:y1, x0:x1].any(), f"val crop {ex.origin} overlaps a training crop"
        _, left, _, _ = regions(name, 0.25, math.ceil(size * scale[1]))["val"]
        assert x0 >= left
    labels = [ex.label for ex in images.splits["train"]]
    assert sorted(set(labels)) == list(range(len(PHOTOS))) and max(map(labels.count, set(labels))) <= 40
    assert images.splits["train"][0].load().shape == (size, size, 3)


def test_photo_crops_are_deterministic_by_seed():
    first, again, other = (photo_crops(64, 6, 2, seed=s).splits["train"] for s in (0, 0, 1))
    assert all(np.array_equal(a.load(), b.load()) for a, b in zip(first, again))
    assert [a.origin for a in first] != [c.origin for c in other]


def test_photo_crops_refuse_bad_settings_by_name():
    with pytest.raises(SourceError, match="scale must be MIN MAX with 1 <= MIN"):
        photo_crops(64, 10, 10, scale=(0.5, 1.0))
    with pytest.raises(SourceError, match="train region of photo 'chelsea' is 300x226 px, smaller than --size 256"):
        photo_crops(256, 10, 10)


def test_shards_photos_writes_a_labelled_rgb_set(tmp_path, monkeypatch, capsys, session_env):
    out = tmp_path / "photos"
    args = [
        "shards",
        "photos",
        "--size",
        "32",
        "--count",
        "40",
        "--val-count",
        "10",
        "--out",
        str(out),
        "--no-progress",
    ]
    code, err = run_main(args, session_env, monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["image_size"], manifest["channels"], manifest["classes"]) == (32, 3, list(PHOTOS))
    assert (manifest["splits"]["train"]["count"], manifest["splits"]["val"]["count"]) == (40, 10)


# ---- SWD ------------------------------------------------------------------------------------------------------------


def test_laplacian_pyramid_matches_the_scipy_reference_and_reconstructs():
    """pyr_down / pyr_up as Karras et al.'s code writes them (scipy.ndimage.convolve, mode mirror, 5x5 binomial)."""
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    g = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    ref_down = ndimage.convolve(x.numpy(), g[None, None], mode="mirror")[:, :, ::2, ::2]
    assert np.allclose(pyr_down(x).numpy(), ref_down, atol=1e-12)
    small = pyr_down(x)
    up = np.zeros((2, 3, 32, 32))
    up[:, :, ::2, ::2] = small.numpy()
    assert np.allclose(pyr_up(small).numpy(), ndimage.convolve(up, 4 * g[None, None], mode="mirror"), atol=1e-12)
    levels = laplacian_pyramid(x, min_size=8)
    assert [lv.shape[-1] for lv in levels] == [32, 16, 8]
    rebuilt = levels[-1].double()
    for band in reversed(levels[:-1]):
        rebuilt = band.double() + pyr_up(rebuilt)
    assert torch.allclose(rebuilt, x, atol=1e-5)


def test_sliced_wasserstein_gives_the_known_distances_of_gaussians():
    g = torch.Generator().manual_seed(0)
    n = 40000
    z = lambda d: torch.randn(n, d, generator=g, dtype=torch.float64)  # noqa: E731
    # 1-D: W1(N(0,1), N(m,1)) = |m|; W1(N(0,1), N(0,s^2)) = |s - 1| sqrt(2 / pi)
    assert sliced_wasserstein(z(1), z(1) + 0.7, 1, 1, g).item() == pytest.approx(0.7, rel=0.03)
    assert sliced_wasserstein(z(1), 3 * z(1), 1, 1, g).item() == pytest.approx(2 * math.sqrt(2 / math.pi), rel=0.03)
    # d-D, shifted by mu: a unit direction theta sees |theta . mu|, whose mean over the sphere is
    # |mu| Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2))
    d, mu = 8, torch.full((8,), 0.5, dtype=torch.float64)
    expected = mu.norm().item() * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    assert sliced_wasserstein(z(d), z(d) + mu, 8, 256, g).mean().item() == pytest.approx(expected, rel=0.05)
    a = z(d)
    assert sliced_wasserstein(a, a.clone(), 2, 16, g).abs().max().item() == 0  # the same points: exactly 0


def test_swd_sees_blur_at_the_fine_levels_only_and_states_its_noise(crops):
    a, b, val = crops
    same, itself = swd(a, b, seed=0), swd(a, a, seed=0)
    # the noise floor, measured: one set against itself (other random neighbourhoods and directions) and two draws
    # of the same distribution
    assert all(itself[k] < 0.6 * same[k] + 5 for k in itself)
    blurred = swd(a, pyr_up(pyr_down(b)), seed=0)
    assert list(same) == ["swd_64", "swd_32", "swd_16", "swd_mean"]
    assert blurred["swd_64"] - same["swd_64"] > 20  # fine detail removed: a large error at 64 px
    assert abs(blurred["swd_16"] - same["swd_16"]) < 8  # the coarse layout untouched: within the noise
    assert swd(a, torch.rand_like(b) * 2 - 1, seed=0)["swd_mean"] > 5 * same["swd_mean"]
    repeat = swd(a, b, seed=0)
    assert repeat == same  # seeded


# ---- power spectrum -------------------------------------------------------------------------------------------------


def test_white_noise_has_a_flat_spectrum_of_its_variance():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 3, 32, 32, generator=g) * 0.5
    spectrum = radial_spectrum(noise)
    assert spectrum.shape == (16,)
    assert torch.allclose(spectrum, torch.full_like(spectrum, 0.25), rtol=0.08)
    err = spectrum_error(noise, 2 * torch.randn(64, 3, 32, 32, generator=g), min_size=8)
    assert list(err) == ["spectrum_32", "spectrum_16", "spectrum_8", "spectrum_mean"]
    for value in err.values():  # variance x16: 10 log10(16) = 12.04 dB in every band
        assert value == pytest.approx(10 * math.log10(16), abs=0.4)


def test_spectrum_error_shows_blur_in_the_fine_bands_only(crops):
    a, b, _ = crops
    same, blurred = spectrum_error(a, b), spectrum_error(a, pyr_up(pyr_down(b)))
    assert max(same.values()) < 1.0  # two draws of one distribution: under 1 dB everywhere
    assert blurred["spectrum_64"] > 5 and blurred["spectrum_32"] > 2  # the blur's attenuation, high k
    # the error falls with frequency: the low band moves a little (the filter's skirt reaches k = 8)
    assert blurred["spectrum_64"] > blurred["spectrum_32"] > blurred["spectrum_16"]
    assert blurred["spectrum_16"] < blurred["spectrum_64"] / 3
