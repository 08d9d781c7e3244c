"""``python -m pyramid_dm bench fid-floor``: the FID-proxy of real images against real images.

A perfect generator scores this, not 0: N real val images against the train statistics carry the same finite-sample
bias as N generated ones. Every generated FID in the same feature space and at the same N is read against it.
"""

from __future__ import annotations

import torch

from ..data.builtin import shard_location
from ..data.manifest import Manifest
from ..eval.features import build_features
from ..eval.quality import quality_metrics
from ..eval.real_features import real_features


def fid_floor(shards: str, resize: int | None, num: list[int], features: str = "auto", kid_subset_size: int = 1000):
    location = shard_location(shards)
    manifest = Manifest.load(location)
    extractor = build_features(features, manifest.name)
    train = real_features(manifest, "train", extractor, resize)
    val = real_features(manifest, "val", extractor, resize)
    rows = []
    for n in num:
        if n > len(val):
            raise ValueError(f"--num {n} exceeds the {len(val)} val images of {manifest.path}")
        perm = torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:n]
        metrics = quality_metrics(train, val[perm], extractor.name, kid_subset_size)
        rows.append(
            {
                "dataset": manifest.name,
                "image_size": resize or manifest.image_size,
                "num_val": n,
                "num_train": len(train),
                **metrics,
            }
        )
        print("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()))
    return rows
