"""LightningDataModule over webdataset shards (local, or any webdataset URL such as ``pipe:aws s3 cp ... -``).

Training: shards are resampled with replacement and every rank draws exactly ``train_batches_per_epoch`` batches, so
DDP ranks never wait on each other. Validation: each shard is read exactly once, split across ranks then workers.
Batches are tuples ``(image (B, C, H, W) in [-1, 1], label (B,) or -1, seed (B,))``; ``seed`` is a stable per-sample
integer (CRC32 of the key) used for deterministic validation noise.
"""

from __future__ import annotations

import io
import logging
import math
import signal
import warnings
import zlib
from functools import partial

import lightning as L
import numpy as np
import torch
import webdataset as wds
from PIL import Image

from ..errors import UserError
from .builtin import shard_location
from .manifest import Manifest, ShardError

log = logging.getLogger(__name__)
IMAGE_KEYS = ("png", "jpg", "jpeg")


class SampleError(UserError):
    """A sample inside a shard that cannot be decoded; the message names the shard and key."""


def decode_sample(sample: dict, channels: int, image_size: int, hflip: bool) -> tuple[torch.Tensor, int, int]:
    """Raw webdataset sample -> (CHW float tensor in [-1, 1], label or -1, seed). PIL only, no torchvision."""
    key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:
        raise SampleError(f"{url}: sample {key!r} has no image (expected one of {IMAGE_KEYS})")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = img.convert("L" if channels == 1 else "RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"{url}: sample {key!r}: cannot decode image ({exc})") from exc
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.array(img, dtype=np.uint8))
    x = (x[None] if x.ndim == 2 else x.permute(2, 0, 1)).float().div(127.5).sub(1)
    if hflip and torch.rand(()) < 0.5:
        x = x.flip(-1)
    label = int(sample["cls"]) if "cls" in sample else -1
    return x, label, zlib.crc32(key.encode())


class SkipAndCount:
    """webdataset handler for the training stream: warn about a corrupt sample or shard, count it, and go on."""

    def __init__(self):
        self.skipped = 0

    def __call__(self, exn: Exception) -> bool:
        self.skipped += 1
        log.warning("skipped corrupt training data (%d so far in this worker): %s", self.skipped, exn)
        return True


def _raise_with_culprit(exn: Exception) -> bool:
    if isinstance(exn, UserError):
        raise exn
    raise ShardError(f"validation data: {exn!r}") from exn


class CountedShards:
    """Pipeline stage: tar shards -> raw samples, checking that each shard yields the sample count its manifest
    records (a clobbered tar header otherwise ends tarfile's stream early without any error). A short shard raises
    when ``strict`` (validation) and is reported to ``handler`` otherwise (training). A class, so workers can pickle it.
    """

    def __init__(self, expected: dict[str, int], manifest: str, strict: bool, handler):
        self.expected, self.manifest, self.strict, self.handler = expected, manifest, strict, handler

    max_empty_in_a_row = 50  # a resampled stream whose shards all fail would otherwise spin forever

    def __call__(self, urls):
        to_samples = wds.tarfile_to_samples(handler=self.handler)
        empty = 0
        for url in urls:
            n = 0
            for sample in to_samples(iter([url])):
                n += 1
                yield sample
            empty = 0 if n else empty + 1
            if empty >= self.max_empty_in_a_row:
                raise ShardError(f"the last {empty} shards read (the latest {url['url']}) yielded no sample at all")
            name = next((f for f in self.expected if f in url["url"]), None)
            if name is not None and n != self.expected[name]:
                exc = ShardError(
                    f"shard {url['url']} yielded {n} of the {self.expected[name]} samples that {self.manifest} "
                    "records: it is corrupt or truncated; write the shard set again with --overwrite"
                )
                if self.strict:
                    raise exc
                self.handler(exc)


class ShardDataModule(L.LightningDataModule):
    """Images from a shard set written by ``python -m pyramid_dm shards``, or ``builtin:digits`` / ``fashion_mnist``.

    Args:
        shards: shard directory, its ``manifest.json``, or ``builtin:NAME``. The manifest gives image size, channels
            and classes; the model config receives them through links, so they are never typed twice.
        train_urls / val_urls: override where the shards are read from (brace patterns, ``pipe:`` commands, http);
            the manifest still describes their content.
        resize: resize images to resize x resize (default: the manifest's size); the model follows.
        train_batches_per_epoch: batches each rank draws per epoch (default: one pass over the training split).
        verify_checksums: check every local shard's SHA-256 against the manifest at setup (reads all bytes).
    """

    def __init__(
        self,
        shards: str = "builtin:digits",
        train_urls: str | None = None,
        val_urls: str | None = None,
        resize: int | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        hflip: bool = False,
        train_batches_per_epoch: int | None = None,
        shuffle_buffer: int = 1000,
        verify_checksums: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        location = shard_location(shards, progress=True)
        self.manifest = Manifest.load(location)
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.image_size = int(resize or self.manifest.image_size)
        self.channels = self.manifest.channels
        self.num_classes = self.manifest.num_classes
        self.dataset_name = self.manifest.name

    def setup(self, stage: str | None = None) -> None:
        h = self.hparams
        if h.train_urls is None and stage in (None, "fit"):
            self.manifest.check("train", h.verify_checksums)
        if h.val_urls is None:
            self.manifest.check("val", h.verify_checksums)

    def _urls(self, split: str):
        override = self.hparams.train_urls if split == "train" else self.hparams.val_urls
        return override or [str(p) for p in self.manifest.shard_paths(split)]

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def batches_per_epoch(self) -> int:
        h = self.hparams
        per_rank = h.batch_size * self.world_size
        return h.train_batches_per_epoch or max(1, math.ceil(self.manifest.count("train") / per_rank))

    def _decode(self, hflip: bool):
        return partial(decode_sample, channels=self.channels, image_size=self.image_size, hflip=hflip)

    def _samples(self, strict: bool, handler) -> CountedShards:
        return CountedShards(_expected_counts(self.manifest), str(self.manifest.path), strict, handler)

    def train_dataloader(self):
        h, handler = self.hparams, SkipAndCount()
        ds = wds.DataPipeline(
            wds.ResampledShards(self._urls("train")),
            self._samples(strict=False, handler=handler),
            wds.shuffle(h.shuffle_buffer),
            wds.map(self._decode(h.hflip), handler=handler),
            wds.batched(h.batch_size, partial=False),
        )
        n = self.batches_per_epoch()
        loader = wds.WebLoader(ds, batch_size=None, num_workers=h.num_workers, **worker_options(h.num_workers))
        with warnings.catch_warnings():  # with_length only sets __len__ (for the progress bar), which is all we want
            warnings.simplefilter("ignore", UserWarning)
            return loader.with_epoch(n).with_length(n)

    def val_dataloader(self):
        h = self.hparams
        urls = self._urls("val")
        ds = ordered_batches(self.manifest, urls, self._decode(False), h.batch_size, split_by_rank=True)
        workers = min(h.num_workers, len(urls)) if isinstance(urls, list) else h.num_workers
        return wds.WebLoader(ds, batch_size=None, num_workers=workers, **worker_options(workers))


def worker_options(num_workers: int) -> dict:
    """Loader workers are spawned, once (persistent), not forked from the trainer: a fork taken while
    another thread of the trainer (W&B's, the collective backend's) holds a lock can leave the worker deadlocked
    forever, and the whole DDP job with it (seen under Slurm: rank 0's only worker stuck in a futex at its start).
    They ignore the requeue signal (:func:`ignore_requeue_signal`)."""
    if num_workers <= 0:
        return {}
    return {"persistent_workers": True, "multiprocessing_context": "spawn", "worker_init_fn": ignore_requeue_signal}


def ignore_requeue_signal(worker_id: int) -> None:
    """Slurm sends the requeue signal (SIGUSR1) to every process of the job step. Its default action would kill a
    loader worker, and the trainer with it, before Lightning's handler has saved and requeued (seen on the test
    cluster); the trainer alone handles it."""
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _expected_counts(manifest: Manifest) -> dict[str, int]:
    return {e["file"]: e["count"] for split in ("train", "val") for e in manifest.split(split)["shards"]}


def ordered_batches(manifest: Manifest, urls, decode, batch_size: int, split_by_rank: bool) -> wds.DataPipeline:
    """Every sample of ``urls`` exactly once, in shard order, strictly checked (a bad sample or short shard raises,
    naming it). ``split_by_rank`` splits the shards across DDP ranks and loader workers."""
    stages = [wds.SimpleShardList(urls)]
    if split_by_rank:
        stages += [wds.split_by_node, wds.split_by_worker]
    return wds.DataPipeline(
        *stages,
        CountedShards(_expected_counts(manifest), str(manifest.path), strict=True, handler=_raise_with_culprit),
        wds.map(decode, handler=_raise_with_culprit),
        wds.batched(batch_size, partial=True),
    )


def read_split(
    manifest: Manifest, split: str, limit: int | None = None, image_size: int | None = None, batch_size: int = 500
):
    """Yield ``(images in [-1, 1], labels)`` batches of the first ``limit`` samples of a split, in shard order, in
    this process (evaluation statistics, classifier training). Asking for more samples than the split holds raises."""
    available = manifest.count(split)
    if limit is not None and limit > available:
        raise ShardError(
            f"asked for {limit} real {split} images but {manifest.path} holds only {available} in that split; "
            f"ask for at most {available} (or use the other split)"
        )
    manifest.check(split)
    decode = partial(
        decode_sample, channels=manifest.channels, image_size=image_size or manifest.image_size, hflip=False
    )
    urls = [str(p) for p in manifest.shard_paths(split)]
    remaining = available if limit is None else limit
    for images, labels, _ in ordered_batches(manifest, urls, decode, batch_size, split_by_rank=False):
        if remaining <= 0:
            return
        yield torch.as_tensor(images[:remaining]), torch.as_tensor(labels[:remaining])
        remaining -= len(images)
