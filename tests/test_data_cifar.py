"""CIFAR-10 from its python archive, on small archives made here in its exact layout."""

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kaem import data
from kaem.data import DataError, read_cifar10

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _make_archive(path: Path, n: int = 4, skip: str | None = None) -> dict[str, np.ndarray]:
    """A ``cifar-10-python.tar.gz`` with ``n`` images a batch; returns each batch's data."""
    rng = np.random.default_rng(0)
    made = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in BATCHES:
            if name == skip:
                continue
            pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, n)]
            raw = pickle.dumps(
                {b"batch_label": name.encode(), b"data": pixels, b"labels": labels}, protocol=2
            )
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            made[name] = (pixels, np.asarray(labels))
    return made


def test_the_reader_keeps_the_planes_the_order_and_the_labels(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    made = _make_archive(archive)
    (train_x, train_y), (test_x, test_y) = read_cifar10(archive)
    assert train_x.shape == (20, 3, 32, 32) and train_x.dtype == np.uint8
    assert test_x.shape == (4, 3, 32, 32) and test_y.dtype == np.int64
    # Row r of a batch: the red plane, then green, then blue, each 32 rows of 32 pixels.
    pixels, labels = made["data_batch_2"]
    image = train_x[4 + 1]
    assert np.array_equal(image[0].ravel(), pixels[1, :1024])
    assert np.array_equal(image[2, 31], pixels[1, 3072 - 32 :])
    assert np.array_equal(train_y[4:8], labels)
    assert np.array_equal(test_y, made["test_batch"][1])
    # The extracted folder reads the same.
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "out", filter="data")
    (again_x, _), _ = read_cifar10(tmp_path / "out")
    assert np.array_equal(again_x, train_x)


def test_prepare_dataset_writes_the_official_split(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    made = _make_archive(archive)
    out = data.prepare_dataset(
        "cifar10", tmp_path / "cifar10.h5", source=archive, n_train=12, n_test=4, progress=False
    )
    train, _ = data.load_images(out, "train")
    test, _ = data.load_images(out, "test")
    assert train.shape == (12, 3, 32, 32) and test.shape == (4, 3, 32, 32)
    # The test split comes from the test batch alone, never from the training images.
    test_rows = {bytes(r) for r in made["test_batch"][0]}
    assert {bytes(im.reshape(-1)) for im in test} == test_rows
    assert data.read_metadata(out)["source"].startswith("CIFAR-10 ")
    assert data.DATASETS["cifar10"].n_train == 50_000


@pytest.mark.parametrize(
    "make,words",
    [
        (lambda p: p.write_bytes(b"not an archive at all"), ["not a readable", "download it"]),
        (lambda p: p.write_bytes(_truncated(p)), ["not a readable"]),
        (lambda p: _make_archive(p, skip="data_batch_3"), ["data_batch_3"]),
    ],
    ids=["garbage", "truncated", "missing-batch"],
)
def test_a_missing_or_corrupt_archive_is_named_and_nothing_is_written(tmp_path, make, words):
    archive = tmp_path / "cifar-10-python.tar.gz"
    make(archive)
    out = tmp_path / "cifar10.h5"
    with pytest.raises(DataError) as err:
        data.prepare_dataset("cifar10", out, source=archive, n_train=4, n_test=2, progress=False)
    assert str(archive) in str(err.value)
    for word in words:
        assert word in str(err.value)
    assert not out.exists() and not list(tmp_path.glob("*.h5*"))


def _truncated(path: Path) -> bytes:
    _make_archive(path)
    raw = path.read_bytes()
    return raw[: len(raw) // 2]


def test_a_missing_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nosuch\.tar\.gz: no such file"):
        data.prepare_dataset("cifar10", tmp_path / "x.h5", source=tmp_path / "nosuch.tar.gz")


def test_a_batch_that_is_not_cifar_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in BATCHES:
        (folder / name).write_bytes(
            pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
        )
    with pytest.raises(DataError, match=r"data_batch_1: data has dtype uint8 and shape \(2, 10\)"):
        read_cifar10(tmp_path)
