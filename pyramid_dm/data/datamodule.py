"""LightningDataModule over webdataset shards (local, or any webdataset URL such as ``pipe:aws s3 cp ... -``).

Training: shards are resampled with replacement and every rank draws exactly ``train_batches_per_epoch`` batches, so
DDP ranks never wait on each other. Validation: each shard is read exactly once, split across ranks then workers.
Batches are tuples ``(image (B, C, H, W) in [-1, 1], label (B,) or -1, seed (B,))``; ``seed`` is a stable per-sample
integer (CRC32 of the key) used for deterministic validation noise.
"""

from __future__ import annotations

import atexit
import functools
import io
import logging
import math
import os
import warnings
import zlib
from functools import partial

import lightning as L
import numpy as np
import torch
import webdataset as wds
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from PIL import Image

from ..errors import UserError
from ..signals import kill_loader_workers, loader_worker_signals
from .builtin import shard_location
from .encoded import FLIPPED, LATENTS, encoded_record
from .imageio import ImageError, read_image
from .manifest import Manifest, ShardError
from .streams import (
    CountedShards,
    ResumableStream,
    SkipAndCount,
    SkipStats,
    Waited,
    WithSkips,
    expected_counts,
    ordered_batches,
)

log = logging.getLogger(__name__)
IMAGE_KEYS = ("png", "jpg", "jpeg")


class SampleError(UserError):
    """A sample inside a shard that cannot be decoded; the message names the shard and key."""


def decode_sample(
    sample: dict,
    channels: int,
    image_size: int,
    hflip: bool,
    num_classes: int | None = None,
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, int, int]:
    """Raw webdataset sample -> (CHW float tensor in [-1, 1], label or -1, seed). PIL only, no torchvision.

    A labelled data set (``num_classes`` > 0) needs every sample's ``.cls`` to be an integer in [0, num_classes);
    anything else raises, naming the shard and key (the training stream skips and counts it). ``num_classes`` 0: an
    unlabelled set (-1); None: the label is read unchecked (-1 without one)."""
    key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:
        raise SampleError(f"{url}: sample {key!r} has no image (expected one of {IMAGE_KEYS})")
    label = read_label(sample, num_classes, url, key)
    try:
        img = read_image(io.BytesIO(data), f"{url}: sample {key!r}", channels, max_pixels)
    except ImageError as exc:
        raise SampleError(str(exc)) from exc
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC, box=_square_box(img.size, url, key))
    x = torch.from_numpy(np.array(img, dtype=np.uint8))
    x = (x[None] if x.ndim == 2 else x.permute(2, 0, 1)).float().div(127.5).sub(1)
    if hflip and torch.rand(()) < 0.5:
        x = x.flip(-1)
    return x, label, zlib.crc32(key.encode())


def decode_latent_sample(
    sample: dict, size: int, hflip: bool, num_classes: int | None = None
) -> tuple[torch.Tensor, int, int]:
    """Raw webdataset sample of encoded shards (:mod:`.encoded`) -> (packed levels (D,), label or -1, seed); with
    ``hflip``, the stored latents of the mirrored image for half the samples."""
    key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
    use = FLIPPED if hflip and torch.rand(()) < 0.5 else LATENTS
    if use not in sample:
        raise SampleError(f"{url}: sample {key!r} has no .{use} (shards encode writes one for every sample)")
    latents = np.load(io.BytesIO(sample[use]), allow_pickle=False)
    if latents.shape != (size,):
        raise SampleError(f"{url}: sample {key!r} holds {latents.shape} latent values, not the manifest's {size}")
    label = read_label(sample, num_classes, url, key)
    return torch.from_numpy(latents), label, zlib.crc32(key.encode())


_CROPPED_WARNED: set[str] = set()  # the shards whose non-square images were reported (once per shard and process)


def _square_box(size: tuple[int, int], url: str, key: str) -> tuple[int, int, int, int]:
    """The centre square of an image of ``size`` (w, h): a non-square image is centre-cropped, as ``shards --size``
    does, never stretched; the first such image of a shard is reported."""
    w, h = size
    side = min(w, h)
    if w != h and url not in _CROPPED_WARNED:
        _CROPPED_WARNED.add(url)
        log.warning(
            "%s: sample %r is %dx%d, not square: centre-cropped to %dx%d before resizing", url, key, w, h, side, side
        )
    return ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)


def read_label(sample: dict, num_classes: int | None, url: str, key: str) -> int:
    """The sample's class id, checked against the data set's classes (-1 for an unlabelled data set)."""
    if num_classes == 0 or (num_classes is None and "cls" not in sample):
        return -1
    if "cls" not in sample:
        raise SampleError(f"{url}: sample {key!r} has no .cls label but the data set has {num_classes} classes")
    raw = sample["cls"]
    try:
        label = int(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, UnicodeDecodeError):
        raise SampleError(f"{url}: sample {key!r} has the label {raw!r}, not an integer class id") from None
    if num_classes is not None and not 0 <= label < num_classes:
        raise SampleError(
            f"{url}: sample {key!r} has the label {label}, outside the data set's classes 0..{num_classes - 1}"
        )
    return label


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
        max_pixels: images whose header declares more pixels are rejected before decoding (default: 2^25, or
            ``PYRAMID_DM_MAX_PIXELS``); in training they are skipped and counted like any corrupt sample.
        read_timeout_s: a ``pipe:`` shard that sends nothing for this long is stopped: skipped and counted in
            training, an error naming it in validation.
        max_skip_rate: training stops with an error naming the shard set once more than this fraction of the samples
            read (after the first 500) was skipped as corrupt; the count and rate are logged as ``data/skipped`` and
            ``data/skip_rate``.
        seed: the training stream's seed. The stream is reproducible from it, and its position (epoch, batches drawn)
            is saved in every checkpoint: a resumed run draws the rest of the interrupted epoch from a fresh resample
            seeded by (seed, epoch, batches drawn), so no batch drawn before the checkpoint is replayed
            (:class:`~pyramid_dm.data.streams.ResumableStream`).
        pin_memory: batches in page-locked memory, so that the copy to the GPU runs asynchronously (None: on when a
            GPU is present).
        prefetch_factor: batches each worker prepares ahead (with ``num_workers`` > 0). ``bench train`` reports the
            loader's images/s alone and beside the step.
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
        max_pixels: int | None = None,
        read_timeout_s: float = 600.0,
        max_skip_rate: float = 0.1,
        seed: int = 0,
        pin_memory: bool | None = None,
        prefetch_factor: int = 2,
    ):
        super().__init__()
        self.save_hyperparameters()
        location = shard_location(shards, progress=True)
        self.manifest = Manifest.load(location)
        if batch_size < 1:
            raise UserError(f"data.batch_size must be >= 1, got {batch_size}")
        if prefetch_factor < 1:
            raise UserError(f"data.prefetch_factor must be >= 1, got {prefetch_factor}")
        if not 0 <= max_skip_rate <= 1 or read_timeout_s <= 0:
            raise UserError(
                f"data.max_skip_rate must lie in [0, 1] and data.read_timeout_s be > 0, got {max_skip_rate}, "
                f"{read_timeout_s}"
            )
        if val_urls is None and self.manifest.count("val") == 0:
            raise UserError(  # here, before the trainer starts a W&B run or a run directory for nothing
                f"data.init_args.shards: {self.manifest.path} has no validation images (its val split is empty); "
                "validation (val/loss, the best checkpoint, the FID-proxy) needs some: write the shards again with "
                "--val-fraction > 0 (folder, digits), or point data.init_args.val_urls at other shards"
            )
        self.skips = SkipStats()
        self._logged_skips = 0  # the skip count last logged
        self.image_size = int(resize or self.manifest.image_size)
        if self.image_size < self.manifest.image_size:  # a reused config's resize: say so, the model follows it
            rank_zero_warn(
                f"data.init_args.resize: {resize} shrinks the {self.manifest.image_size}x{self.manifest.image_size} "
                f"images of {self.manifest.path} to {resize}x{resize}, and the model is built for that size; set "
                "--data.init_args.resize null to train at the shards' own size"
            )
        self.channels = self.manifest.channels
        self.num_classes = self.manifest.num_classes
        self.encoded = encoded_record(self.manifest)  # latents of a first stage beside the images (shards encode)
        if self.encoded is not None and hflip and not self.encoded["hflip"]:
            raise UserError(
                f"data.init_args.hflip: {self.manifest.path} holds latents encoded without flipped copies; encode the "
                "shards again with `shards encode --hflip`, or set hflip false"
            )
        if self.encoded is not None and resize not in (None, self.manifest.image_size):
            raise UserError(
                f"data.init_args.resize: {self.manifest.path} holds latents of {self.manifest.image_size} px images; "
                "resize the images first (`shards folder --size`), then encode those shards"
            )
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
        if self.encoded is not None:
            size = sum(c * h * w for c, h, w in self.encoded["level_shapes"])
            return partial(decode_latent_sample, size=size, hflip=hflip, num_classes=self.num_classes)
        return partial(
            decode_sample,
            channels=self.channels,
            image_size=self.image_size,
            hflip=hflip,
            num_classes=self.num_classes,
            max_pixels=self.hparams.max_pixels,
        )

    def _samples(self, strict: bool, handler) -> CountedShards:
        counts = expected_counts(self.manifest)
        return CountedShards(counts, str(self.manifest.path), strict, handler, self.hparams.read_timeout_s)

    def train_dataloader(self):
        h, handler = self.hparams, SkipAndCount(self.hparams.max_skip_rate, str(self.manifest.path))
        shards = wds.ResampledShards(self._urls("train"), seed=h.seed, deterministic=True)
        ds = wds.DataPipeline(
            shards,
            self._samples(strict=False, handler=handler),
            wds.detshuffle(h.shuffle_buffer, seed=h.seed),
            wds.map(self._decode(h.hflip), handler=handler),
            wds.map(handler.count),
            wds.batched(h.batch_size, partial=False),
            WithSkips(handler),
        )
        n, workers = self.batches_per_epoch(), self.workers()
        loader = wds.WebLoader(ds, batch_size=None, num_workers=workers, **self.loader_options(workers))
        with warnings.catch_warnings():  # with_epoch sets the epoch's length, which is all we want of it
            warnings.simplefilter("ignore", UserWarning)
            loader = loader.with_epoch(n)
        return ResumableStream(loader, [shards, ds.pipeline[2]], n, h.seed, self.skips)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """During training: log the skip count and rate (whenever the count changes, and every 50 steps), and stop the
        run when the rate passes ``max_skip_rate``."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return batch
        if self.skips.skipped != self._logged_skips or trainer.global_step % 50 == 0:
            self.log_skips()
        self.skips.check(self.hparams.max_skip_rate, str(self.manifest.path))
        return batch

    def log_skips(self) -> None:
        trainer = self.trainer
        if trainer is not None and trainer.logger is not None:
            trainer.logger.log_metrics(self.skips.metrics(), step=trainer.global_step)
            self._logged_skips = self.skips.skipped

    def teardown(self, stage: str) -> None:
        """A skip count that changed after the last batch is logged before the loggers close, so that W&B shows what
        a run skipped (a run whose count never changed adds no row)."""
        if stage == "fit" and self.skips.skipped != self._logged_skips:
            self.log_skips()

    def val_dataloader(self):
        h = self.hparams
        urls = self._urls("val")
        ds = ordered_batches(
            self.manifest, urls, self._decode(False), h.batch_size, split_by_rank=True, timeout=h.read_timeout_s
        )
        workers = min(self.workers(), len(urls)) if isinstance(urls, list) else self.workers()
        return Waited(wds.WebLoader(ds, batch_size=None, num_workers=workers, **self.loader_options(workers)))

    def workers(self) -> int:
        """``num_workers``, at most the cores this process may use (more only contend with the trainer; PyTorch warns
        about them): a recipe's 4 workers become 2 on a 2-core laptop, with a notice."""
        asked = self.hparams.num_workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if asked > cores and not getattr(self, "_capped", False):
            self._capped = True
            rank_zero_info(f"data.num_workers {asked} > the {cores} cores this process may use: {cores} workers")
        return min(asked, cores)

    def loader_options(self, workers: int) -> dict:
        h = self.hparams
        pin = torch.cuda.is_available() if h.pin_memory is None else h.pin_memory
        prefetch = {"prefetch_factor": h.prefetch_factor} if workers > 0 else {}
        return {"pin_memory": pin, **prefetch, **worker_options(workers)}


def worker_options(num_workers: int) -> dict:
    """Loader workers are spawned, once (persistent), not forked from the trainer: a fork taken while
    another thread of the trainer (W&B's, the collective backend's) holds a lock can leave the worker deadlocked
    forever, and the whole DDP job with it (seen under Slurm: rank 0's only worker stuck in a futex at its start).
    They leave Slurm's signals to the trainer and end with it (:func:`pyramid_dm.signals.loader_worker_signals`)."""
    if num_workers <= 0:
        return {}
    _kill_workers_at_exit()
    return {"persistent_workers": True, "multiprocessing_context": "spawn", "worker_init_fn": loader_worker_signals}


@functools.lru_cache(maxsize=1)
def _kill_workers_at_exit() -> None:
    # registered after multiprocessing's own exit handler, so it runs first: a worker blocked in a stalled read is
    # killed instead of waited for
    atexit.register(kill_loader_workers)


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
        decode_sample,
        channels=manifest.channels,
        image_size=image_size or manifest.image_size,
        hflip=False,
        num_classes=manifest.num_classes,
    )
    urls = [str(p) for p in manifest.shard_paths(split)]
    remaining = available if limit is None else limit
    for images, labels, _ in ordered_batches(manifest, urls, decode, batch_size, split_by_rank=False):
        if remaining <= 0:
            return
        yield torch.as_tensor(images[:remaining]), torch.as_tensor(labels[:remaining])
        remaining -= len(images)
