"""ShardDataModule: streams, resizing, labels, pipe: URLs, and a clear error (or a counted skip) for bad data."""

import hashlib
import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from pyramid_dm.data import SampleError, ShardDataModule, ShardError
from pyramid_dm.data.datamodule import decode_sample
from pyramid_dm.errors import UserError


@pytest.fixture
def shards(tmp_path, digits_shards) -> Path:
    """A private copy of the digits shard set that a test may damage."""
    return Path(shutil.copytree(digits_shards, tmp_path / "digits"))


def rewrite_shard(root: Path, name: str, mutate) -> None:
    """Rewrite shard ``name`` with ``mutate(members: dict[name, bytes])`` and keep the manifest consistent with it."""
    with tarfile.open(root / name) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    mutate(members)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member, payload in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (root / name).write_bytes(buf.getvalue())
    manifest = json.loads((root / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            if entry["file"] == name:
                entry["bytes"], entry["sha256"] = len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(manifest))


def truncate_first_png(members: dict) -> str:
    key = sorted(k for k in members if k.endswith(".png"))[0]
    members[key] = members[key][: len(members[key]) // 2]
    return key[:-4]


def make(root, **kw) -> ShardDataModule:
    dm = ShardDataModule(str(root), **{"batch_size": 32, "num_workers": 0, **kw})
    dm.setup("fit")
    return dm


def test_manifest_configures_size_channels_classes(shards):
    dm = make(shards)
    assert (dm.image_size, dm.channels, dm.num_classes, dm.dataset_name) == (8, 1, 10, "digits")
    images, labels, seeds = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.min() == -1  # digits have a black background
    assert labels.min() >= 0 and labels.max() <= 9 and seeds.dtype == torch.int64


def test_train_epoch_length_and_exact_once_validation(shards):
    dm = make(shards, train_batches_per_epoch=7)
    assert sum(1 for _ in dm.train_dataloader()) == 7
    seeds = torch.cat([b[2] for b in dm.val_dataloader()])
    assert len(seeds) == dm.manifest.count("val") == len(set(seeds.tolist()))
    default = make(shards)
    assert len(default.train_dataloader()) == -(-dm.manifest.count("train") // 32)


def test_resize_and_pipe_urls(shards):
    paths = " ".join(str(p) for p in sorted(shards.glob("train-*.tar")))
    dm = make(shards, resize=16, train_urls=f"pipe:cat {paths}", train_batches_per_epoch=2)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and batches[0][0].shape == (32, 1, 16, 16)


def test_hflip_flips_about_half_the_samples(shards):
    with tarfile.open(shards / "val-000000.tar") as tar:
        png = tar.extractfile(sorted(n for n in tar.getnames() if n.endswith(".png"))[0]).read()
    sample = {"__key__": "k", "png": png, "cls": b"3"}
    plain, label, _ = decode_sample(sample, 1, 8, hflip=False)
    assert label == 3 and not torch.equal(plain, plain.flip(-1))
    torch.manual_seed(0)
    flips = [torch.equal(decode_sample(sample, 1, 8, hflip=True)[0], plain.flip(-1)) for _ in range(400)]
    assert 150 < sum(flips) < 250


def test_missing_shard_path_is_a_clear_error(tmp_path):
    with pytest.raises(ShardError, match=r"shard path .*nowhere does not exist"):
        ShardDataModule(str(tmp_path / "nowhere"))


def test_empty_and_truncated_tar_are_named(shards):
    (shards / "val-000001.tar").write_bytes(b"")
    with pytest.raises(ShardError, match=r"val-000001.tar is empty"):
        make(shards)
    shutil.copy(shards / "train-000000.tar", shards / "val-000001.tar")
    data = (shards / "train-000003.tar").read_bytes()
    (shards / "train-000003.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"train-000003.tar has \d+ bytes but .* records"):
        make(shards)


def test_corrupt_tar_same_size_fails_validation_naming_it_and_is_skipped_in_training(shards, caplog):
    path = shards / "val-000000.tar"
    data = bytearray(path.read_bytes())
    data[1024:3072] = b"\x07" * 2048  # clobber headers, keep the size: only reading can tell
    path.write_bytes(bytes(data))
    make(shards)  # the fast preflight passes ...
    # ... validation names it: the first symptom is a sample that lost its label, or the short count at the end
    with pytest.raises((ShardError, SampleError), match=r"val-000000.tar(: sample '\w+' has no .cls| yielded \d+ of)"):
        list(make(shards).val_dataloader())
    train = bytearray((shards / "train-000000.tar").read_bytes())  # the same damage in training: warned and skipped
    train[1024:3072] = b"\x07" * 2048
    (shards / "train-000000.tar").write_bytes(bytes(train))
    with caplog.at_level(logging.WARNING, logger="pyramid_dm.data.datamodule"):
        # two shards, one damaged, ~32 random draws: the damaged one is drawn except with probability 2^-32
        urls = str(shards / "train-{000000..000001}.tar")
        # half the data is damaged here, far past the default data.max_skip_rate: this test lifts the limit
        dm = make(shards, train_urls=urls, train_batches_per_epoch=100, max_skip_rate=1.0)
        assert len(list(dm.train_dataloader())) == 100
    assert any("train-000000.tar yielded" in r.getMessage() for r in caplog.records)
    with pytest.raises(ShardError, match="fails its SHA-256 check"):
        make(shards, verify_checksums=True)


def test_truncated_image_fails_validation_and_is_skipped_with_a_count_in_training(shards, caplog):
    keys = []
    rewrite_shard(shards, "val-000000.tar", lambda m: keys.append(truncate_first_png(m)))
    with pytest.raises(SampleError, match=rf"val-000000.tar: sample '{keys[0]}': cannot decode image"):
        list(make(shards).val_dataloader())
    for name in [p.name for p in shards.glob("train-*.tar")]:
        rewrite_shard(shards, name, truncate_first_png)
    dm = make(shards, train_batches_per_epoch=60, batch_size=64)
    with caplog.at_level(logging.WARNING, logger="pyramid_dm.data.datamodule"):
        batches = list(dm.train_dataloader())
    assert len(batches) == 60 and all(b[0].shape == (64, 1, 8, 8) for b in batches)
    skipped = [r.getMessage() for r in caplog.records if "skipped corrupt training data" in r.getMessage()]
    assert skipped and "cannot decode image" in skipped[0] and "(1 so far" in skipped[0]


def test_training_stream_of_unreadable_shards_stops_with_an_error(shards):
    for path in shards.glob("train-*.tar"):
        path.write_bytes(b"\x07" * path.stat().st_size)  # same size, nothing readable
    # the skip-rate limit (data.max_skip_rate) or, with it lifted, the run of empty shards stops it
    with pytest.raises(ShardError, match="were skipped as corrupt"):
        list(make(shards, train_batches_per_epoch=2).train_dataloader())
    with pytest.raises(ShardError, match="yielded no sample at all"):
        list(make(shards, train_batches_per_epoch=2, max_skip_rate=1.0).train_dataloader())


def test_the_training_stream_resumes_where_it_stopped(digits_shards):
    """The stream is reproducible from its seed; its position is a state Lightning saves; a resumed stream does not
    replay the batches drawn before the checkpoint, and two resumes from one state agree."""

    def first(loader, k):
        out = []
        for batch in loader:
            out.append(batch[2].tolist())
            if len(out) == k:
                return out
        return out

    dm = make(digits_shards, batch_size=16)
    loader = dm.train_dataloader()
    drawn = first(loader, 3)
    state = loader.state_dict()
    assert state == {"seed": 0, "epoch": 0, "drawn": 3} and first(dm.train_dataloader(), 3) == drawn
    resumed = []
    for _ in range(2):
        again = dm.train_dataloader()
        again.load_state_dict(state)
        resumed.append(first(again, 3))
    assert resumed[0] == resumed[1]  # reproducible
    assert resumed[0][0] != drawn[0] and resumed[0] != drawn  # the run's first batches are not replayed
    assert first(make(digits_shards, batch_size=16, seed=1).train_dataloader(), 3) != drawn
    rest = dm.train_dataloader()
    rest.load_state_dict({**state, "drawn": len(rest) - 2})
    assert sum(1 for _ in rest) == 2  # the interrupted epoch ends where it would have


def test_pinned_memory_and_prefetch_reach_both_loaders(shards):
    """``pin_memory`` (None: on only with a GPU, so off here) and ``prefetch_factor`` (with workers) are the options
    the train and validation loaders are built with; a prefetch below 1 is refused by name."""
    dm = make(shards, num_workers=1, prefetch_factor=4)
    val = dm.val_dataloader().loader.pipeline[0]  # the torch DataLoader inside webdataset's WebLoader
    assert val.pin_memory is torch.cuda.is_available() and val.prefetch_factor == 4
    assert make(shards, num_workers=0, pin_memory=True).val_dataloader().loader.pipeline[0].pin_memory
    assert dm.loader_options(0) == {"pin_memory": torch.cuda.is_available()}  # no workers: nothing to prefetch
    with pytest.raises(UserError, match="data.prefetch_factor must be >= 1, got 0"):
        make(shards, prefetch_factor=0)


def test_loader_workers_are_capped_by_the_cores(shards):
    """A recipe's workers beyond the cores this process may use only contend (PyTorch warns): capped, with a notice."""
    import os

    cores = len(os.sched_getaffinity(0))
    assert make(shards, num_workers=cores + 3).workers() == cores
    assert make(shards, num_workers=1).workers() == 1
    val = make(shards, num_workers=cores + 3).val_dataloader().loader.pipeline[0]
    assert val.num_workers <= cores
