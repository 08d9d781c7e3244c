"""The shard streams under the data module: opening a shard (with a read timeout for ``pipe:`` commands), checking
each shard's sample count against its manifest, and what the training stream does with bad data (skip and count,
reported with every batch) versus validation (raise, naming the shard).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import time

import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..errors import UserError
from ..signals import pipe_child_setup, pipe_command, prepare_pipe_children, waiting_on_data
from .manifest import Manifest, ShardError

log = logging.getLogger("pyramid_dm.data.datamodule")  # the data module's: one name for all the loader's warnings


class StalledShard(ShardError):
    """A shard whose bytes stopped coming (a hung ``pipe:`` command)."""


class PipeStream:
    """The stdout of a ``pipe:`` command as a read-only stream whose every read waits at most ``timeout`` seconds
    for data: a command that stops sending (a hung network copy) raises :class:`StalledShard` naming the shard,
    instead of blocking the job forever."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout
        # its own process group, so that stopping it stops the whole pipeline the shell started; terminated with
        # that group when this process ends, however it ends (pyramid_dm.signals)
        prepare_pipe_children()
        self.proc = subprocess.Popen(
            pipe_command(url[len("pipe:") :]),
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,
            preexec_fn=pipe_child_setup,
        )
        self.fd = self.proc.stdout.fileno()

    def read(self, n: int = -1) -> bytes:
        n = 1 << 20 if n is None or n < 0 else n
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            self.close()
            raise StalledShard(
                f"shard {self.url}: no data for {self.timeout:g} s, the command stalled; it was stopped "
                "(data.init_args.read_timeout_s sets the limit)"
            )
        data = os.read(self.fd, n)
        if not data and self.proc.wait() != 0:
            raise ShardError(f"shard {self.url}: the command exited with status {self.proc.returncode}")
        return data

    def __del__(self):  # a reader that stops mid-shard (the end of an epoch) must not leave the command running
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        if self.proc.stdout.closed:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc.stdout.close()


def open_streams(urls, handler, timeout: float):
    """url dicts -> url dicts with an open ``stream`` (webdataset's ``url_opener``, with the stall guard for
    ``pipe:`` URLs)."""
    for sample in urls:
        url = sample["url"]
        try:
            if url.startswith("pipe:"):
                stream = PipeStream(url, timeout)
            else:
                stream = wds.gopen(url)
            yield {**sample, "stream": stream}
        except Exception as exn:
            if handler(exn):
                continue
            break


def message_of(exn: Exception) -> str:
    """An exception's own message, without what webdataset appends to its ``args`` (the stream object and the url,
    which would print as a tuple with an object address)."""
    if exn.args and isinstance(exn.args[0], str):
        return exn.args[0]
    return str(exn) or type(exn).__name__


MIN_SAMPLES = 500  # a skip rate is judged only after this many samples were read


def check_skip_rate(skipped: int, delivered: int, max_rate: float, what: str) -> None:
    """An error naming ``what`` once more than ``max_rate`` of the samples read were skipped as corrupt."""
    total = skipped + delivered
    if total >= MIN_SAMPLES and skipped > max_rate * total:
        raise ShardError(
            f"{what}: {skipped} of the {total} training samples read were skipped as corrupt "
            f"({skipped / total:.0%} > data.max_skip_rate {max_rate:g}); the shards are damaged (the loader's warnings "
            "name them): write the shard set again, or raise data.init_args.max_skip_rate"
        )


class SkipAndCount:
    """webdataset handler for the training stream: warn about a corrupt sample or shard, count it, and go on; and
    stop the stream with an error once more than ``max_rate`` of the samples this worker read were skipped (after
    :data:`MIN_SAMPLES`), so a stream whose every sample is bad fails instead of spinning forever."""

    def __init__(self, max_rate: float = 1.0, what: str = "the training data"):
        self.skipped, self.unreported, self.delivered = 0, 0, 0
        self.max_rate, self.what = max_rate, what

    def __call__(self, exn: Exception) -> bool:
        n = getattr(exn, "missing", 1)  # a short shard counts its missing samples
        self.skipped += n
        self.unreported += n
        log.warning("skipped corrupt training data (%d so far in this worker): %s", self.skipped, message_of(exn))
        self.check()
        return True

    def check(self) -> None:
        check_skip_rate(self.skipped, self.delivered, self.max_rate, self.what)

    def count(self, sample):
        """Pipeline stage function: one more sample delivered."""
        self.delivered += 1
        return sample

    def take(self) -> int:
        """Samples skipped since the last call."""
        n, self.unreported = self.unreported, 0
        return n


def _raise_with_culprit(exn: Exception) -> bool:
    if isinstance(exn, ShardError | UserError):
        exn.args = (message_of(exn),)  # webdataset appended the stream and the url
        raise exn
    raise ShardError(f"validation data: {type(exn).__name__}: {message_of(exn)}") from exn


class CountedShards:
    """Pipeline stage: tar shards -> raw samples, checking that each shard yields the sample count its manifest
    records (a clobbered tar header otherwise ends tarfile's stream early without any error). A short shard raises
    when ``strict`` (validation) and is reported to ``handler`` otherwise (training). A class, so workers can pickle it.

    Stalls in training (docs/reliability.md): a shard that stalled is not drawn again by this worker for
    :data:`COOLDOWN` x ``timeout`` seconds, and when no sample at all has arrived for :data:`NO_SAMPLE_LIMIT` x
    ``timeout`` seconds the stream fails, naming the shards that stalled (it would otherwise skip them forever)."""

    COOLDOWN = 10
    NO_SAMPLE_LIMIT = 3

    def __init__(self, expected: dict[str, int], manifest: str, strict: bool, handler, timeout: float = 600.0):
        self.expected, self.manifest, self.strict, self.handler = expected, manifest, strict, handler
        self.timeout = timeout

    def to_samples(self, urls, stalled: list | None = None):
        def handler(exn):
            if stalled is not None and isinstance(exn, StalledShard):
                stalled.append(exn)
            return self.handler(exn)

        streams = open_streams(urls, handler, self.timeout)
        return group_by_keys(tar_file_expander(streams, handler=handler), handler=handler)

    max_empty_in_a_row = 50  # a resampled stream whose shards all fail would otherwise spin forever

    def check_arrivals(self, last_sample: float, stalled: set[str]) -> None:
        quiet = time.monotonic() - last_sample
        if not self.strict and stalled and quiet > self.NO_SAMPLE_LIMIT * self.timeout:
            raise ShardError(
                f"no training sample arrived for {quiet:.0f} s ({self.NO_SAMPLE_LIMIT} x data.init_args.read_timeout_s "
                f"{self.timeout:g}); these shards stalled: {sorted(stalled)}"
            )

    def __call__(self, urls):
        empty, last_sample = 0, time.monotonic()
        cooling: dict[str, float] = {}  # stalled shard -> when it may be drawn again
        for url in urls:
            if cooling.get(url["url"], 0.0) > time.monotonic():
                self.check_arrivals(last_sample, set(cooling))
                time.sleep(min(0.05, self.timeout / 10))  # every shard may be cooling: do not spin
                continue
            n, stalls = 0, []
            for sample in self.to_samples(iter([url]), stalls):
                n += 1
                last_sample = time.monotonic()
                yield sample
            if stalls and not self.strict:
                cooling[url["url"]] = time.monotonic() + self.COOLDOWN * self.timeout
                self.check_arrivals(last_sample, set(cooling))
                continue  # reported as a stall already; its count is not a second problem
            empty = 0 if n else empty + 1
            if empty >= self.max_empty_in_a_row:
                raise ShardError(f"the last {empty} shards read (the latest {url['url']}) yielded no sample at all")
            name = next((f for f in self.expected if f in url["url"]), None)
            if name is not None and n != self.expected[name]:
                want = self.expected[name]
                what = "it is corrupt or truncated" if n < want else "it is not the shard the manifest describes"
                exc = ShardError(
                    f"shard {url['url']} yielded {n} of the {want} samples that {self.manifest} records: {what}; "
                    "write the shard set again with --overwrite"
                )
                if self.strict:
                    raise exc
                exc.missing = max(want - n, 0)  # extra samples were delivered: nothing to count as skipped
                self.handler(exc)


class SkipStats:
    """Samples skipped and samples delivered to training on this rank (all workers), for the logs and the limit."""

    def __init__(self):
        self.skipped, self.seen = 0, 0

    def update(self, skipped: int, seen: int) -> None:
        self.skipped += skipped
        self.seen += seen

    @property
    def rate(self) -> float:
        total = self.skipped + self.seen
        return self.skipped / total if total else 0.0

    def metrics(self) -> dict:
        return {"data/skipped": self.skipped, "data/skip_rate": self.rate}

    def check(self, max_rate: float, what: str) -> None:
        check_skip_rate(self.skipped, self.seen, max_rate, what)


class WithSkips:
    """Pipeline stage after batching: each training batch carries the number of samples its worker skipped since its
    last batch, ``(images, labels, seeds, skipped)``, to the main process, where :class:`ResumableStream` adds it to
    its :class:`SkipStats` and passes the batch on without it."""

    def __init__(self, handler: SkipAndCount):
        self.handler = handler

    def __call__(self, batches):
        for batch in batches:
            yield (*batch, torch.tensor(self.handler.take()))


def expected_counts(manifest: Manifest) -> dict[str, int]:
    return {e["file"]: e["count"] for split in ("train", "val") for e in manifest.split(split)["shards"]}


def ordered_batches(
    manifest: Manifest, urls, decode, batch_size: int, split_by_rank: bool, timeout: float = 600.0
) -> wds.DataPipeline:
    """Every sample of ``urls`` exactly once, in shard order, strictly checked (a bad sample or short shard raises,
    naming it). ``split_by_rank`` splits the shards across DDP ranks and loader workers."""
    stages = [wds.SimpleShardList(urls)]
    if split_by_rank:
        stages += [wds.split_by_node, wds.split_by_worker]
    return wds.DataPipeline(
        *stages,
        CountedShards(expected_counts(manifest), str(manifest.path), True, _raise_with_culprit, timeout),
        wds.map(decode, handler=_raise_with_culprit),
        wds.batched(batch_size, partial=True),
    )


class Waited:
    """A loader whose every wait for a batch is marked as such (:func:`pyramid_dm.signals.waiting_on_data`): a stop
    signal that arrives there (or before it) ends the run at once instead of after the wait."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            with waiting_on_data():
                try:
                    batch = next(batches)
                except StopIteration:
                    return
            yield batch


class ResumableStream:
    """The training loader with a position Lightning saves in every checkpoint (its ``state_dict`` /
    ``load_state_dict``, the protocol Lightning calls a resumable loader).

    The stream is a resample with replacement, reproducible from ``seed``: the shard draw and the shuffle buffer are
    seeded by (seed, epoch, rank, worker). The state is (seed, epoch, batches drawn in it). A resumed run draws the
    rest of the interrupted epoch from a fresh resample seeded by (seed, epoch, batches drawn): the batches drawn
    before the checkpoint are not replayed (without a saved position the stream would start again from its first
    batches), and two resumes from the same checkpoint see the same batches. The ``seeded`` stages (webdataset's
    ResampledShards and detshuffle) are re-seeded before the loader's workers start."""

    def __init__(self, loader, seeded: list, batches_per_epoch: int, seed: int, skips: SkipStats | None = None):
        self.loader, self.seeded, self.n, self.seed = loader, seeded, batches_per_epoch, seed
        self.epoch, self.drawn = 0, 0
        self.skips = skips if skips is not None else SkipStats()

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.drawn >= self.n:
            self.epoch, self.drawn = self.epoch + 1, 0
        for *batch, skipped in Waited(self.loader):  # the worker's skip count rides along (WithSkips); it stops here
            self.drawn += 1
            self.skips.update(int(skipped), len(batch[0]))
            yield tuple(batch)
            if self.drawn >= self.n:
                break

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.drawn = int(state["seed"]), int(state["epoch"]), int(state["drawn"])
        resumed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + self.drawn + 1
        for stage in self.seeded:
            stage.seed = resumed
