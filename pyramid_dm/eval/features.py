"""Feature spaces for FID/KID. Every extractor maps images in [-1, 1], shape (N, C, H, W), to (N, d) features.

- ``<dataset>_clf`` (e.g. ``fmnist_clf``, ``digits_clf``): the penultimate layer of a small classifier trained on the
  data set's own labels; weights ship in ``pyramid_dm/eval/weights``. Offline, in-domain; metrics are logged as
  ``fid_fmnist_clf`` etc. and are **not** comparable with published (Inception) FIDs.
- ``inception``: the standard Inception-v3 pool features (Heusel et al. 2017) through torchmetrics/torch-fidelity,
  the only FID comparable with published numbers. Needs ``pip install 'pyramid_dm[inception]'`` and the weights file.
- ``random``: a fixed-seed, never-trained conv net; for data without labels or a classifier. Relative only.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoints import read_torch_file
from ..errors import UserError
from ..nets.classifier import SmallClassifier

WEIGHTS_DIR = Path(__file__).parent / "weights"
# Data set name (the shard manifest's "name") -> the committed classifier trained on it.
DATASET_CLASSIFIERS = {"digits": "digits_clf", "fashion_mnist": "fmnist_clf"}
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


class FeatureExtractor(nn.Module):
    """Frozen feature network. ``name`` goes into metric names; ``cache_id`` identifies its exact weights."""

    name: str
    cache_id: str
    num_features: int

    def train(self, mode: bool = True):  # never leaves eval mode (torchmetrics and Lightning call .train())
        return super().train(False)


class ClassifierFeatures(FeatureExtractor):
    """Penultimate features of a :class:`SmallClassifier` weights file written by ``train-classifier``."""

    def __init__(self, path: str | Path):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"classifier weights {path} not found; train them with `python -m pyramid_dm train-classifier "
                f"--shards ... --name NAME --out {path}`"
            )
        blob = path.read_bytes()
        ckpt = read_torch_file(path, "classifier weights")
        try:
            self.net = SmallClassifier(**ckpt["config"])
            self.net.load_state_dict(ckpt["state_dict"])
        except Exception as exc:
            raise UserError(f"{path} is not a classifier weights file written by train-classifier ({exc})") from exc
        self.meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        self.name = ckpt["name"]
        self.cache_id = f"{self.name}-{hashlib.sha256(blob).hexdigest()[:16]}"
        self.num_features = self.net.num_features
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.net.features(images)


class RandomFeatures(FeatureExtractor):
    """Fixed-seed random conv features (never trained): any channel count, download-free."""

    def __init__(self, num_features: int = 256, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans, layers = [3, 32, 64, 128, num_features], []
        for cin, cout in zip(chans[:-1], chans[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            nn.init.kaiming_normal_(conv.weight, generator=g)
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.name, self.cache_id, self.num_features = "random", f"random{num_features}-seed{seed}", num_features
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        return self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


class InceptionFeatures(FeatureExtractor):
    """Inception-v3 pool3 (2048-d) features as in torch-fidelity, the standard FID network."""

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        path = Path(weights or os.environ.get("PYRAMID_DM_INCEPTION_WEIGHTS") or default_inception_path())
        if not path.is_file():
            raise UserError(
                f"Inception weights {path} not found (this run cannot download them). On a machine with internet: "
                f"download {INCEPTION_URL}, copy it to {path} or set PYRAMID_DM_INCEPTION_WEIGHTS=/path/to/it. "
                "Offline alternative: --eval.features auto (the data set's own classifier)"
            )
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        except (ImportError, ModuleNotFoundError) as exc:
            raise UserError(
                "Inception features need torch-fidelity and torchvision: pip install 'pyramid_dm[inception]' "
                f"(a torchvision build matching your torch) ({exc})"
            ) from exc
        self.name, self.num_features = "inception", 2048
        self.cache_id = f"inception-{path.stat().st_size}"
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return self.net(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x)


def default_inception_path() -> Path:
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return torch_home / "hub" / "checkpoints" / INCEPTION_FILE


def available_classifiers() -> list[str]:
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))


def build_features(spec: str, dataset: str | None = None) -> FeatureExtractor:
    """``auto`` (the data set's committed classifier, else ``random``), a classifier name (``fmnist_clf``), a path to
    a classifier weights file, ``random`` or ``inception`` (``inception:/path/to/weights.pth``)."""
    if spec == "auto":
        name = DATASET_CLASSIFIERS.get(dataset or "")
        return ClassifierFeatures(WEIGHTS_DIR / f"{name}.pt") if name else RandomFeatures()
    if spec == "random":
        return RandomFeatures()
    if spec == "inception" or spec.startswith("inception:"):
        return InceptionFeatures(spec.partition(":")[2] or None)
    if spec.endswith(".pt"):
        return ClassifierFeatures(spec)
    if (WEIGHTS_DIR / f"{spec}.pt").is_file():
        return ClassifierFeatures(WEIGHTS_DIR / f"{spec}.pt")
    raise UserError(
        f"unknown feature extractor {spec!r}: use auto, random, inception, a classifier weights file (.pt) or one of "
        f"{available_classifiers()}"
    )


@torch.no_grad()
def extract(extractor: FeatureExtractor, images: Tensor, batch_size: int = 500) -> Tensor:
    """Features of ``images`` as float32 on the CPU, in batches."""
    device = next(extractor.parameters()).device
    out = [extractor(images[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, extractor.num_features)
