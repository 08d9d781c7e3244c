"""A small image classifier whose penultimate features serve as an offline FID/KID feature space.

Standard Inception FID needs downloaded weights; a classifier trained on the data set's own labels gives a
download-free, in-domain feature space (the "FID-proxy"). Its numbers are not comparable with published FIDs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallClassifier(nn.Module):
    """VGG-style CNN: three stages (widths ``w, 2w, 4w``), max-pool between them, global average pooling.

    Inputs are images in [-1, 1] of any size; they are resized (bilinear, antialiased) to ``input_size`` first, so
    real and generated images of one resolution always meet the network at the size it was trained on.
    ``features(x)`` is the pooled ``4w``-dimensional penultimate layer; ``forward(x)`` gives class logits.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: int = 32):
        super().__init__()
        self.in_channels, self.input_size = in_channels, input_size
        w = width
        self.body = nn.Sequential(
            *_block(in_channels, w),
            *_block(w, w),
            nn.MaxPool2d(2),
            *_block(w, 2 * w),
            *_block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *_block(2 * w, 4 * w),
            *_block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.num_features = 4 * w
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * w, num_classes))

    def prepare(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the classifier takes {self.in_channels}-channel images, got shape {tuple(x.shape)}")
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x.float(), size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        return x.float()

    def features(self, x: Tensor) -> Tensor:
        return self.body(self.prepare(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def accuracy(self, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
        was_training = self.training
        self.eval()
        correct = sum(
            (self(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
            for i in range(0, len(images), batch_size)
        )
        self.train(was_training)
        return correct / len(images)
