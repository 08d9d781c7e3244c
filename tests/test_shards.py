"""Shard writer: real sources round-trip pixel-exactly; overwrite is refused; an interrupted run is never complete."""

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyramid_dm.cli import main
from pyramid_dm.data import Manifest, ShardError, SourceError, idx_dataset, image_folder, sklearn_digits, write_shards
from pyramid_dm.data.sources import FASHION_MNIST_DIR, Example, ImageSet


def read_shards(root: Path, split: str) -> list[tuple[str, np.ndarray, int | None]]:
    out = []
    for path in Manifest.load(root).shard_paths(split):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, payload in members.items():
            if name.endswith(".png"):
                key = name[:-4]
                label = members.get(f"{key}.cls")
                out.append((key, np.array(Image.open(io.BytesIO(payload))), None if label is None else int(label)))
    return out


def test_digits_round_trip_pixels_and_labels(tmp_path):
    images = sklearn_digits(val_fraction=0.2, seed=0)
    write_shards(images, tmp_path, per_shard=300, progress=False)
    m = Manifest.load(tmp_path)
    assert (m.image_size, m.channels, m.num_classes) == (8, 1, 10)
    assert m.count("train") + m.count("val") == 1797 and m.count("val") == round(1797 * 0.2)
    assert [s["count"] for s in m.split("train")["shards"]][:-1] == [300] * 4
    expected = {ex.key: (ex.load(), ex.label) for ex in images.splits["train"]}
    back = read_shards(tmp_path, "train")
    assert len(back) == len(expected)
    for key, pixels, label in back:
        assert np.array_equal(pixels, expected[key][0]) and label == expected[key][1]
    m.check("train", checksums=True)


def test_writing_is_deterministic(tmp_path):
    for d in ("a", "b"):
        write_shards(sklearn_digits(), tmp_path / d, per_shard=500, progress=False)
    for name in ("train-000000.tar", "val-000000.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def make_folder(root: Path, mode: str, classes=("cat", "dog"), per_class=5, size=12) -> None:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")


@pytest.mark.parametrize(("mode", "channels"), [("RGB", 3), ("L", 1)])
def test_image_folder_classes_and_channels(tmp_path, mode, channels):
    make_folder(tmp_path / "src", mode)
    write_shards(image_folder(tmp_path / "src", val_fraction=0.2), tmp_path / "out", per_shard=4, progress=False)
    m = Manifest.load(tmp_path / "out")
    assert (m.channels, m.image_size, m.classes) == (channels, 12, ["cat", "dog"])
    back = read_shards(tmp_path / "out", "train") + read_shards(tmp_path / "out", "val")
    assert len(back) == 10 and {label for *_, label in back} == {0, 1}
    src = np.array(Image.open(tmp_path / "src" / "dog" / "0.png"))
    assert any(np.array_equal(p, src) and label == 1 for _, p, label in back)


def test_image_folder_resize_and_size_mismatch(tmp_path):
    make_folder(tmp_path / "src", "RGB")
    Image.new("RGB", (20, 16)).save(tmp_path / "src" / "cat" / "odd.png")
    with pytest.raises(SourceError, match="odd.png is 20x16"):
        write_shards(image_folder(tmp_path / "src"), tmp_path / "out", progress=False)
    write_shards(image_folder(tmp_path / "src"), tmp_path / "out2", size=8, progress=False)
    assert Manifest.load(tmp_path / "out2").image_size == 8


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for stem, n in (("train", 30), ("t10k", 10)):
        data[stem] = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", data[stem][0])
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", data[stem][1])
    write_shards(idx_dataset(tmp_path), tmp_path / "out", per_shard=8, progress=False)
    back = sorted(read_shards(tmp_path / "out", "val"))
    assert [k for k, *_ in back] == [f"val{i:08d}" for i in range(10)]
    for i, (_, pixels, label) in enumerate(back):
        assert np.array_equal(pixels, data["t10k"][0][i]) and label == data["t10k"][1][i]


def test_bad_idx_file_names_the_file(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    with pytest.raises(SourceError, match="train-images-idx3-ubyte: header says"):
        idx_dataset(tmp_path)


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.exists(), reason="needs Debian's dataset-fashion-mnist (installed by .ci/run)"
)
def test_real_fashion_mnist_idx_files():
    ds = idx_dataset(FASHION_MNIST_DIR)
    assert len(ds.splits["train"]) == 60_000 and len(ds.splits["val"]) == 10_000
    assert ds.classes[0] == "t-shirt" and ds.splits["val"][0].load().shape == (28, 28)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    write_shards(sklearn_digits(), tmp_path, per_shard=500, progress=False)
    before = (tmp_path / "train-000000.tar").read_bytes()
    with pytest.raises(ShardError, match="already holds shards"):
        write_shards(sklearn_digits(), tmp_path, per_shard=1000, progress=False)
    assert (tmp_path / "train-000000.tar").read_bytes() == before and Manifest.load(tmp_path)
    assert (tmp_path / "train-000003.tar").exists()
    write_shards(sklearn_digits(), tmp_path, per_shard=1000, overwrite=True, progress=False)
    assert Manifest.load(tmp_path).data["per_shard"] == 1000 and not (tmp_path / "train-000003.tar").exists()


def test_interrupted_run_leaves_no_complete_looking_shard(tmp_path):
    good = sklearn_digits().splits["train"][:25]

    def boom():
        raise KeyboardInterrupt

    broken = ImageSet("test", None, {"train": [*good, Example("bad", None, boom)], "val": []})
    with pytest.raises(KeyboardInterrupt):
        write_shards(broken, tmp_path, per_shard=10, progress=False)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert not list(tmp_path.glob("*.partial")) and not (tmp_path / "manifest.json").exists()
    with pytest.raises(ShardError, match="incomplete"):
        Manifest.load(tmp_path)


def test_shards_command(tmp_path, capsys):
    make_folder(tmp_path / "src", "RGB", per_class=3)
    out = tmp_path / "out"
    assert main(["shards", "folder", str(tmp_path / "src"), "--out", str(out), "--size", "8", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_size"] == 8 and manifest["classes"] == ["cat", "dog"]
    assert all(len(s["sha256"]) == 64 for s in manifest["splits"]["train"]["shards"])
    assert main(["shards", "folder", str(tmp_path / "src"), "--out", str(out), "--no-progress"]) == 2
    assert "already holds shards" in capsys.readouterr().err
    assert main(["shards", "folder", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "missing does not exist" in capsys.readouterr().err
