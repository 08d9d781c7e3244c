"""The classifier-guidance part: a trained noise-conditional classifier (:class:`pyramid_dm.models.NoisyClassifier`)
read from its checkpoint without Lightning, checked against the model it guides, and wrapped around that model's
denoiser (:class:`~pyramid_dm.diffusion.guidance.classifier.ClassifierGuidance`) with one scale.

It guides single-level pixel models: the classifier reads images, and a latent or pyramid level is not one."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoints import read_checkpoint, weights
from ..diffusion.guidance.classifier import ClassifierGuidance, NoisyClassifierFn
from ..errors import UserError
from ..flops import count_flops
from ..nets import EncoderClassifier
from .engine import FLOP_BATCH
from .wrappers import LevelCall, SamplingWrapper


def build_classifier(h) -> EncoderClassifier:
    """The network a classifier's hyperparameters describe (a LightningModule's or a checkpoint's)."""
    try:
        return EncoderClassifier(h["channels"], h["num_classes"], h["image_size"], **dict(h.get("net") or {}))
    except (ValueError, TypeError) as e:
        raise UserError(f"model.net: {e}") from None


class ClassifierGuide(SamplingWrapper):
    """``classifier_scale`` s of guidance by the classifier checkpoint at ``path`` (see the module docstring); a
    sampling wrapper outside classifier-free guidance (:mod:`.wrappers`). Records ``calls``: gradients per sample
    (each a classifier forward and backward) of the last ``sample`` call."""

    position = 40.0

    def __init__(self, path: str | Path, scale: float, device: str | torch.device = "cpu"):
        if not scale >= 0:
            raise UserError(f"--classifier_scale must be >= 0 (0 = unguided), got {scale}")
        ckpt = read_checkpoint(path, "--classifier", ("classifier",), "a noise-conditional classifier")
        self.path, self.scale, self.stamp = str(path), float(scale), ckpt["pyramid_dm"]
        self.hparams = dict(ckpt["hyper_parameters"])
        net = build_classifier(self.hparams)
        try:
            net.load_state_dict(weights(ckpt, "net."))
        except RuntimeError as exc:
            what = "the classifier its hyperparameters describe"
            raise UserError(f"--classifier {path}: weights do not fit {what} ({exc})") from exc
        self.net = net.to(device).eval().requires_grad_(False)
        self.log_prob = NoisyClassifierFn(self.net)
        self.num_classes = int(self.hparams["num_classes"])
        self.image_shape = (self.hparams["channels"], self.hparams["image_size"], self.hparams["image_size"])
        self.last: ClassifierGuidance | None = None
        self._flops: float | None = None

    @property
    def dataset(self) -> str | None:
        return (self.stamp.get("data") or {}).get("dataset")

    def check(self, model, dataset: str | None, any_schedule: bool = False) -> None:
        """Refuse a model this classifier cannot guide: another data set, image shape or set of classes, a model
        that is not single-level pixel diffusion, or another noise schedule unless ``any_schedule`` (the classifier
        reads the noise level, not the time; outside the levels it was trained on it extrapolates: then a warning)."""
        where = f"--classifier {self.path}"
        if model.num_levels != 1 or not model.first_stage.pixel_space:
            raise UserError(
                f"{where}: classifier guidance needs a single-level pixel model (the classifier reads images); this "
                f"is a {model.family} model with {model.num_levels} level(s)"
            )
        if dataset and self.dataset and dataset != self.dataset:
            raise UserError(
                f"{where} was trained on {self.dataset!r} but the model on {dataset!r}: train a classifier on the "
                "model's shards (configs/classifier/)"
            )
        if tuple(model.image_shape) != self.image_shape:
            raise UserError(
                f"{where} reads images of shape {self.image_shape} (C, H, W) but the model generates "
                f"{tuple(model.image_shape)}: train the classifier at the model's resolution (data.init_args.resize)"
            )
        if model.num_classes and model.num_classes != self.num_classes:
            raise UserError(
                f"{where} knows {self.num_classes} classes but the model {model.num_classes}: they were trained on "
                "other labels"
            )
        schedule = model.schedules[0]
        if self.stamp.get("schedule") and self.stamp["schedule"] != schedule.name:
            text = (
                f"{where} was trained at the noise levels of the {self.stamp['schedule']!r} schedule "
                f"(sigma {self.stamp.get('sigma_range')}), the model samples with {schedule.name!r} "
                f"(sigma {list(schedule.sigma_range())})"
            )
            if not any_schedule:
                raise UserError(
                    f"{text}: train the classifier with the model's schedule (configs/classifier/), or pass "
                    "--classifier_any_schedule to guide it anyway"
                )
            print(f"warning: {text}", file=sys.stderr)

    def labels(self, start: int, count: int) -> Tensor:
        """The classes in turn, for samples ``start .. start + count - 1`` (an unconditional model has none)."""
        return torch.arange(start, start + count) % self.num_classes

    # ---- the sampling wrapper -------------------------------------------------------------------------------------
    def begin(self, engine, num_samples: int, labels: Tensor | None) -> None:
        if labels is None:
            raise UserError(f"classifier guidance by {self.path} needs class labels to guide toward")
        if int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise UserError(f"labels {labels.unique().tolist()} are outside the classifier's 0..{self.num_classes - 1}")
        if engine.num_levels != 1:
            raise UserError(f"classifier guidance by {self.path} guides a single-level model")
        self.last = None

    def wrap(self, denoiser, at: LevelCall) -> ClassifierGuidance:
        self.last = ClassifierGuidance(denoiser, self.log_prob, self.scale, at.labels.to(self.device))
        return self.last

    @property
    def calls(self) -> int:
        return self.last.calls if self.last is not None else 0

    def describe(self) -> dict:
        return {"classifier_scale": self.scale}

    def extra_flops(self) -> float:
        return self.calls * self.flops_per_call() if self.calls else 0.0

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def flops_per_call(self) -> float:
        """FLOPs of one guidance gradient for one sample (the classifier's forward and backward), counted by
        ``torch.utils.flop_counter``."""
        if self._flops is not None:
            return self._flops
        probe = ClassifierGuidance(lambda x, s: x, self.log_prob, 1.0, torch.zeros(FLOP_BATCH, dtype=torch.long))
        x = torch.zeros((FLOP_BATCH, *self.image_shape), device=self.device)
        sigma = torch.tensor(1.0, dtype=torch.float64)
        self._flops = float(count_flops(lambda: probe.gradient(x, sigma))) / FLOP_BATCH
        return self._flops
