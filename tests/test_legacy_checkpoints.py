"""Checkpoints written before the engine split (``tests/fixtures/legacy``, made by ``make_legacy.py`` on the code of
that time) load and sample the same images today, through the Lightning-free engine and through the LightningModule:
pixel, latent and pyramid (native, Frido, multi-scale VQ) models, deterministic and stochastic samplers, with and
without guidance. "The same" allows one grey level of float noise (the batched guidance branches)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pyramid_dm.engine import load_engine
from pyramid_dm.images import to_uint8

FIXTURES = Path(__file__).parent / "fixtures" / "legacy"
INDEX = json.loads((FIXTURES / "index.json").read_text())
MODELS = [name for name in INDEX["runs"] if not name.startswith("ae_")]
SETTINGS = dict(__import__("fixtures.make_legacy", fromlist=["SETTINGS"]).SETTINGS)


def _copy(name: str, tmp_path: Path) -> Path:
    """The fixture checkpoint, its autoencoder_ckpt pointed at the copied autoencoder fixture."""
    ckpt = torch.load(FIXTURES / f"{name}.ckpt", weights_only=True)
    ae = INDEX["runs"][name]["autoencoder_fixture"]
    if ae:
        shutil.copy(FIXTURES / f"{ae}.ckpt", tmp_path / f"{ae}.ckpt")
        ckpt["hyper_parameters"]["autoencoder_ckpt"] = str(tmp_path / f"{ae}.ckpt")
    path = tmp_path / f"{name}.ckpt"
    torch.save(ckpt, path)
    return path


def _check(model_sample, labels, name: str) -> None:
    reference = torch.load(FIXTURES / f"{name}.samples.pt", weights_only=True)
    assert reference, name
    for key, images in reference.items():
        g = torch.Generator().manual_seed(INDEX["seed"])
        got = to_uint8(model_sample(INDEX["num_samples"], labels=labels, generator=g, **SETTINGS[key]))
        diff = (got.int() - images.int()).abs().max().item()
        assert diff <= 1, f"{name} {key}: samples differ by {diff} grey levels from the pre-split code's"


@pytest.mark.parametrize("name", MODELS)
def test_old_checkpoints_sample_the_same_images_through_the_engine(name, tmp_path):
    engine = load_engine(_copy(name, tmp_path))
    _check(engine.sample, engine.sample_labels(0, INDEX["num_samples"]), name)


@pytest.mark.parametrize("name", ["pixel", "pyramid_frido", "pyramid_msvq"])
def test_old_checkpoints_sample_the_same_images_through_the_lightning_module(name, tmp_path):
    import importlib

    path = _copy(name, tmp_path)
    class_path = torch.load(path, weights_only=True)["pyramid_dm"]["class_path"]
    module, _, cls = class_path.rpartition(".")
    model = getattr(importlib.import_module(module), cls).load_from_checkpoint(path, map_location="cpu")
    _check(model.eval().sample, model.engine.sample_labels(0, INDEX["num_samples"]), name)


def test_the_comparison_notices_a_changed_sampler(tmp_path):
    """The check above is not vacuous: the same checkpoint sampled with another grid fails it."""
    engine = load_engine(_copy("pixel", tmp_path))
    with pytest.raises(AssertionError, match="grey levels"):
        _check(
            lambda *a, **k: engine.sample(*a, **{**k, "discretization": "trailing"}),
            engine.sample_labels(0, 6),
            "pixel",
        )
