"""The Snakemake workflow: its configuration checks, the paper's plan, lint, and whole runs.

Fast tests check the pieces the rules call (kaem.pipeline, kaem.data, kaem.features)
against closed forms. Tests marked ``workflow`` run Snakemake in a subprocess,
each in its own temporary directory, on the tiny configuration
(``tests/workflow_configs/tiny.yaml``: scikit-learn's 8x8 digits, one cell per kind of
training, tens of steps, a small classifier as feature extractor).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import HANG_S, TINY_DDPM, TINY_LEBM
from matplotlib.image import imread
from PIL import Image

from kaem.bench.sweeps import SWEEPS
from kaem.config import ConfigError, ModelConfig, TrainConfig, from_dict
from kaem.data import iter_samples, load_images, read_samples, samples_metadata, write_samples
from kaem.features import find_inception_weights
from kaem.kinds import load_model
from kaem.metrics import extrapolate_to_infinity
from kaem.model import build_model
from kaem.pipeline.artifacts import (
    cell_metrics,
    dataset_features,
    load_features,
    save_features,
    write_json,
)
from kaem.pipeline.config import (
    WorkflowConfigError,
    cell_info,
    cell_sampler,
    cell_seeds,
    cell_sizes,
    check_config,
    check_models,
    load_config,
    load_schema,
    read_config,
    resolve_cell,
    run_key,
    validate_config,
)
from kaem.pipeline.tables import (
    PAPER_TABLES,
    benchmark_table,
    cells_table,
    extractors_table,
    likelihood_note,
    metrics_table,
    seeds_note,
    thermodynamic_note,
    to_latex,
    to_markdown,
    write_table,
)
from kaem.presets import preset

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SCHEMA = load_schema(REPO / "workflow" / "schemas" / "config.schema.yaml")
TINY = REPO / "tests" / "workflow_configs" / "tiny.yaml"
PAPER = REPO / "config" / "config.yaml"
DEMO = REPO / "config" / "demo.yaml"


def metrics_file(cell: str, seed: int) -> str:
    """Where the workflow writes the metrics of one seed of a cell."""
    return f"results/metrics/{cell}/seed{seed}.json"


def tiny_config() -> dict:
    return yaml.safe_load(TINY.read_text())


def snakemake_command(workdir: Path, config: Path, *args: str) -> list[str]:
    """This repository's workflow on ``config`` in ``workdir`` (``--configfile`` takes several
    values, so it comes before the options that end its list, and the targets)."""
    cmd = [sys.executable, "-m", "snakemake", "--configfile", str(config)]
    return [*cmd, "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]


def snakemake(
    workdir: Path, config: Path, *args: str, timeout: int = HANG_S
) -> subprocess.CompletedProcess:
    """Run :func:`snakemake_command` and capture its output (killed only if it hangs)."""
    return subprocess.run(
        snakemake_command(workdir, config, *args),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def not_blank(path: Path) -> float:
    """Fraction of pixels that differ from the image's most common colour."""
    image = imread(path)[..., :3]
    flat = image.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return float(np.any(np.abs(flat - background) > 0.02, axis=1).mean())


# ----------------------------------------------------------------------------- configuration


def test_tiny_config_is_valid_and_gets_the_schema_defaults():
    cfg = load_config(tiny_config(), SCHEMA)
    assert cfg["sampling"]["seed"] == 1 and cfg["metrics"]["seed"] == 2
    assert cfg["datasets"]["tiny"]["source"] is None and cfg["datasets"]["tiny"]["download"]
    assert cfg["features"]["classifier"]["holdout"] == 0.1
    assert cfg["tables"]["tiny"]["paper"] == "table1"
    # The input is not modified: defaults go into a copy.
    raw = tiny_config()
    validate_config(raw, SCHEMA)
    assert raw == tiny_config()


def test_a_cell_is_its_preset_with_the_common_and_its_own_overrides():
    cfg = load_config(tiny_config(), SCHEMA)
    thermo = resolve_cell(cfg, "tiny_thermo")
    nist = preset("nist")
    assert thermo["train"]["criterion"] == "thermodynamic"
    assert thermo["train"]["thermodynamic"]["n_temps"] == 3
    # untouched preset numbers stay the preset's (paper numbers live once)
    assert thermo["train"]["learning_rate"] == nist["train"]["learning_rate"]
    assert thermo["train"]["grid_update"]["decay"] == nist["train"]["grid_update"]["decay"]
    assert thermo["train"]["grid_update"]["frequency"] == 10
    assert thermo["train"]["max_steps"] == 30  # common_override
    assert thermo["model"]["prior"]["widths"] == [4, 9]
    info = {c: cell_info(cfg, c) for c in cfg["cells"]}
    assert info["tiny_is"][1:7] == ("tiny", "KAEM", "rbf", "importance", "IS", "gaussian")
    assert info["tiny_thermo"].sampler == "thermodynamic (N_t=3, S=1)"
    assert info["tiny_vae"].model == "VAE" and info["tiny_vae"].basis is None
    assert cell_sizes(cfg, "tiny_is") == [100, 150, 200, 250]


def test_run_key_ignores_what_a_resumed_run_may_change():
    cfg = resolve_cell(load_config(tiny_config(), SCHEMA), "tiny_is")
    longer = copy.deepcopy(cfg)
    longer["train"]["max_steps"] = 300
    longer["train"]["epochs"] = 50
    other = copy.deepcopy(cfg)
    other["train"]["learning_rate"] = 0.5
    assert run_key(longer) == run_key(cfg) != run_key(other)
    # The keys left out are exactly those kaem.train lets a resumed run change.
    from kaem.config import RESUMABLE_KEYS

    for key in RESUMABLE_KEYS:
        changed = copy.deepcopy(cfg)
        changed["train"][key] = 7
        assert run_key(changed) == run_key(cfg), key


def _set(cfg: dict, dotted: str, value) -> dict:
    node = cfg
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return cfg


def _delete(cfg: dict, dotted: str) -> dict:
    node = cfg
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return cfg


DELETE = object()

#: (key of the tiny config to change, its new value or DELETE, what the message must say)
MALFORMED = [
    pytest.param("cels", {}, r"config: Additional properties .*'cels' was unexpected", id="cels"),
    pytest.param(
        "datasets.mnst", {"features": "classifier"}, r"datasets: 'mnst' is not", id="datasets.mnst"
    ),
    pytest.param(
        "datasets.tiny.n_train",
        "many",
        r"datasets\.tiny\.n_train: 'many' is not of type 'integer', 'null'",
        id="datasets.tiny.n_train",
    ),
    pytest.param(
        "datasets.tiny.features",
        "vgg",
        r"datasets\.tiny\.features: 'vgg'",
        id="datasets.tiny.features",
    ),
    pytest.param(
        "cells.tiny_is.preset",
        DELETE,
        r"cells\.tiny_is: 'preset' is a required",
        id="cells.tiny_is.preset",
    ),
    pytest.param(
        "cells.tiny_is.preset",
        "mnist",
        r"cells\.tiny_is\.preset: 'mnist'",
        id="cells.tiny_is.preset-2",
    ),
    pytest.param(
        "cells.tiny_is.dataset",
        "svhn",
        r"cells\.tiny_is\.dataset: 'svhn' is not a configured dataset",
        id="cells.tiny_is.dataset",
    ),
    pytest.param(
        "cells.tiny_is.override.model.prior.widthz",
        [2, 3],
        r"cells\.tiny_is\.override: unknown config key\(s\) model\.prior\.widthz",
        id="override.model.prior.widthz",
    ),
    pytest.param(
        "cells.tiny_is.override.train.batch_size",
        "big",
        r"cells\.tiny_is\.override: train\.batch_size: expected an integer, got 'big'",
        id="override.train.batch_size",
    ),
    pytest.param(
        "cells.tiny_is.override.train.batch_size",
        5000,
        r"train\.batch_size 5000 exceeds the 1500 training images of 'tiny'",
        id="override.train.batch_size-2",
    ),
    pytest.param(
        "cells.tiny_is.override.train.batch_size",
        0,
        r"cells\.tiny_is\.override: train\.batch_size: 0 is out of range; it must be at least 1",
        id="override.train.batch_size-3",
    ),
    pytest.param(
        "cells.tiny_is.override.train.learning_rate",
        -0.001,
        r"cells\.tiny_is\.override: train\.learning_rate: -0\.001 is out of range",
        id="override.train.learning_rate",
    ),
    pytest.param(
        "common_override.train.importance.n_samples",
        0,
        r"common_override: train\.importance\.n_samples: 0 is out of range; it must be at "
        r"least 1 \(in cells tiny_thermo, tiny_vae\)",
        id="common_override.train.importance.n_samples",
    ),
    pytest.param(
        "metrics.sizes",
        [100, 200],
        r"metrics\.sizes: \[100, 200\] is too short",
        id="metrics.sizes",
    ),
    pytest.param(
        "metrics.sizes", [1, 100, 200], r"metrics\.sizes\[0\]: 1 is less than", id="metrics.sizes-2"
    ),
    pytest.param(
        "cells.tiny_is.override.model",
        DELETE,
        r"model\.image_shape \[1, 28, 28\] differs from dataset 'tiny''s \[1, 8, 8\]",
        id="override.model",
    ),
    pytest.param(
        "cells.tiny_is.override.train.criterion",
        "elbo",
        r"cells\.tiny_is\.override: train\.criterion 'elbo' does not fit preset 'nist'",
        id="override.train.criterion",
    ),
    pytest.param(
        "cells.tiny_is.override.train.criterion",
        "gibbs",
        r"train\.criterion: 'gibbs' is not one of",
        id="override.train.criterion-2",
    ),
    pytest.param(
        "datasets.celeba",
        {"features": "classifier"},
        r"datasets\.celeba\.features: 'celeba' has no labels",
        id="datasets.celeba",
    ),
    pytest.param(
        "tables.tiny.rows.MLE",
        "nope",
        r"tables\.tiny\.rows\.MLE: 'nope' is not a configured cell",
        id="tables.tiny.rows.MLE",
    ),
    pytest.param(
        "tables.cells", {"title": "x", "rows": {"a": "tiny_is"}}, r"reserved", id="tables.cells"
    ),
    pytest.param(
        "tables.tiny.paper", "table9", r"tables\.tiny\.paper: 'table9'", id="tables.tiny.paper"
    ),
    pytest.param(
        "benchmark.only",
        ["its_prior", "warp"],
        r"benchmark\.only: 'warp' is not a benchmark",
        id="benchmark.only",
    ),
    pytest.param(
        "cells.a/b", {"dataset": "tiny", "preset": "nist"}, r"'a/b' does not", id="cells.a/b"
    ),
    pytest.param("device", "tpu", r"device: 'tpu' is not one of", id="device"),
    pytest.param(
        "benchmark.sweeps.only",
        ["prior_samples", "nz"],
        r"benchmark\.sweeps\.only: 'nz' is not a sweep of kaem\.bench\.sweeps",
        id="benchmark.sweeps.only",
    ),
    pytest.param(
        "benchmark.sweeps.values",
        {"thermo_nt": [0, 2]},
        r"benchmark\.sweeps\.values\.thermo_nt\[0\]: 0 is less than the minimum of 1",
        id="benchmark.sweeps.values",
    ),
    pytest.param(
        "cells.tiny_is.seeds", [1, 1], r"cells\.tiny_is\.seeds: \[1, 1\] has non-unique", id="seeds"
    ),
    pytest.param(
        "cells.tiny_is.seeds", [0, -1], r"cells\.tiny_is\.seeds\[1\]: -1 is less", id="seeds-2"
    ),
    pytest.param("cells.tiny_is.seeds", [], r"cells\.tiny_is\.seeds: \[\] should be", id="seeds-3"),
    pytest.param("seeds", [0.5], r"seeds\[0\]: 0\.5 is not of type 'integer'", id="seeds-4"),
    pytest.param(
        "cells.tiny_is.override.train.seed",
        3,
        r"cells\.tiny_is: seeds \[0, 1\] and train\.seed 3 \(an override\) both set",
        id="seeds-5",
    ),
    pytest.param(
        "metrics.real_images",
        1400,
        r"tables\.tiny\.real: the held-out real images need metrics\.real_images \(1400\) "
        r"plus the largest of metrics\.sizes \(250\) within the 1500 training images of "
        r"'tiny'; set metrics\.real_images to at most 1250",
        id="tables.tiny.real",
    ),
    pytest.param(
        "metrics.real_images", None, r"tables\.tiny\.real: .*\(None\)", id="tables.tiny.real-2"
    ),
]


@pytest.mark.parametrize(("key", "value", "message"), MALFORMED)
def test_malformed_configs_are_rejected_naming_the_fault(key, value, message):
    bad = _delete(tiny_config(), key) if value is DELETE else _set(tiny_config(), key, value)
    with pytest.raises(WorkflowConfigError, match=message):
        load_config(bad, SCHEMA)


def test_every_fault_of_a_config_is_reported_at_once():
    bad = _set(_set(tiny_config(), "datasets.tiny.seed", -1), "sampling.batch_size", 0)
    with pytest.raises(WorkflowConfigError) as err:
        load_config(bad, SCHEMA)
    assert "datasets.tiny.seed: -1" in str(err.value)
    assert "sampling.batch_size: 0" in str(err.value)


@pytest.mark.parametrize("path", [PAPER, DEMO], ids=["config", "demo"])
def test_each_cell_has_one_typed_form_that_the_jobs_read_back_unchanged(path):
    from kaem.kinds import kind_of

    cfg = validate_config(yaml.safe_load(path.read_text()), SCHEMA)
    cells = check_config(cfg)
    assert list(cells) == list(cfg["cells"])
    for name, cell in cells.items():
        # A training job gets plain settings; read back, they are the cell's typed form.
        for seed in cell.seeds:
            settings = cell.settings(seed)
            train = from_dict(TrainConfig, settings["train"], "train")
            assert train == dataclasses.replace(cell.train, seed=seed), name
            assert from_dict(kind_of(train.criterion).config, settings["model"]) == cell.model
        assert cell.dataset == cfg["cells"][name]["dataset"]
        sizes = cfg["cells"][name].get("sizes") or cfg["metrics"]["sizes"]
        assert list(cell.sizes) == sorted(sizes)
        assert all(t < (cell.budget or math.inf) for t in cell.snapshots)
        # Handing out settings leaves the typed form as it was.
        for seed in (None, 0):
            cell.settings(seed)["model"].clear()
        assert cell.settings()["model"] and cell.resolved["model"], name


def test_a_model_that_cannot_be_built_is_named_before_any_job():
    cfg = load_config(
        _set(tiny_config(), "cells.tiny_vae.override.model.encoder_channels", [8, 8, 8, 8]), SCHEMA
    )
    with pytest.raises(WorkflowConfigError, match=r"cells\.tiny_vae\.override: the model cannot"):
        check_models(check_config(cfg))


def test_a_langevin_cell_on_a_prior_without_a_density_is_named_before_any_job():
    cfg = load_config(
        _set(tiny_config(), "cells.tiny_thermo.override.model.prior.shared_uniforms", True), SCHEMA
    )
    with pytest.raises(
        WorkflowConfigError,
        match=r"cells\.tiny_thermo\.override: train\.criterion 'thermodynamic' .*"
        r"shared_uniforms: false",
    ):
        check_models(check_config(cfg))


# ----------------------------------------------------------------------------- kaem pieces


def test_samples_are_written_in_batches_reproducibly_and_read_back(tmp_path):
    model = build_model(
        from_dict(ModelConfig, resolve_cell(load_config(tiny_config(), SCHEMA), "tiny_is")["model"])
    )
    path = write_samples(
        model,
        tmp_path / "s.h5",
        23,
        generator=torch.Generator().manual_seed(5),
        batch_size=10,
        progress=False,
        attrs={"cell": "c", "seed": 5, "settings": {"a": 1}},
    )
    images = read_samples(path)
    assert images.shape == (23, 1, 8, 8) and images.dtype == np.uint8
    meta = samples_metadata(path)
    assert meta["n"] == 23 and meta["seed"] == 5 and json.loads(meta["settings"]) == {"a": 1}
    # Batches are draws of one generator in order: the same as one big call.
    expected = model.generate(10, torch.Generator().manual_seed(5))
    assert np.array_equal(images[:10], (expected * 255).round().to(torch.uint8).numpy())
    assert [len(b) for b in iter_samples(path, 8)] == [8, 8, 7]
    assert np.array_equal(np.concatenate(list(iter_samples(path, 8))), images)
    assert images.std() > 0


def test_a_failed_sampling_leaves_no_file(tmp_path):
    class Broken(torch.nn.Module):
        calls = 0

        def generate(self, n, generator=None):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("generator failed")
            return torch.rand(n, 1, 4, 4, generator=generator)

    with pytest.raises(RuntimeError, match="generator failed"):
        write_samples(Broken(), tmp_path / "s.h5", 20, generator=torch.Generator(), batch_size=10)
    assert list(tmp_path.iterdir()) == []


def test_cell_metrics_recover_the_frechet_distance_of_shifted_gaussians(tmp_path):
    """Real N(0, I) against generated N(mu, I): FID_inf = |mu|^2; identical distributions give
    FID_inf = KID_inf = 0 although FID at every finite N is biased upwards (slope > 0)."""
    rng = np.random.default_rng(0)
    d, shift = 6, np.array([1.0, -0.5, 0.5, 0.0, 0.0, 0.25])
    meta = {"extractor": "x"}
    real = save_features(rng.standard_normal((40_000, d)), tmp_path / "r.npz", meta)
    gen = save_features(rng.standard_normal((4_000, d)) + shift, tmp_path / "g.npz", meta)
    same = save_features(rng.standard_normal((4_000, d)), tmp_path / "s.npz", meta)
    sizes = [500, 1000, 2000, 4000]
    kid = {"kid_subsets": 20, "kid_subset_size": 500, "progress": False}
    out = cell_metrics(real, gen, sizes, seed=0, **kid)
    target = float(shift @ shift)  # 1.5625
    assert abs(out["fid_inf"] - target) < 5 * out["fid_se"] + 0.03
    fit = extrapolate_to_infinity(out["sizes"], out["fid"])
    assert out["fid_inf"] == pytest.approx(fit.intercept) and 0 <= out["fid_r2"] <= 1
    assert out["fid_se"] == pytest.approx(fit.stderr) and out["kid_inf"] > 0.05
    null = cell_metrics(real, same, sizes, seed=0, **kid)
    assert min(null["fid"]) > 0 and null["fid_slope"] > 5  # the 1/N bias being removed
    assert abs(null["fid_inf"]) < 0.02 and abs(null["kid_inf"]) < 0.01
    # KID is unbiased at any size: ~0 for the same law, within a few subset SDs of the mean.
    se = null["kid_largest_std"] / np.sqrt(20)
    assert null["kid_largest_std"] > 0 and abs(null["kid_largest"]) < 4 * se
    assert out["kid_largest"] > 10 * out["kid_largest_std"] / np.sqrt(20)
    # Features of different extractors are never compared.
    other = save_features(np.zeros((10, d)), tmp_path / "o.npz", {"extractor": "y"})
    with pytest.raises(ValueError, match=r"'x' features but .* holds 'y' features"):
        cell_metrics(real, other, [2, 3, 4], seed=0)


def test_features_files_round_trip(tmp_path):
    feats = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = save_features(feats, tmp_path / "f.npz", {"extractor": "classifier", "n": 4})
    back, meta = load_features(path)
    assert np.array_equal(back, feats) and meta == {"extractor": "classifier", "n": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]  # no temporary left


def test_metrics_tables_put_the_papers_values_beside_ours(tmp_path):
    ours = {
        "fid_inf": 80.0,
        "fid_se": 0.5,
        "fid_r2": 0.9,
        "kid_inf": 0.07,
        "kid_se": 1e-4,
        "kid_r2": 0.5,
    }
    df = metrics_table({"MLE": ("svhn_mle", ours), "Extra": ("x", {})}, "table1")
    mle = df.set_index("model").loc["MLE"]
    assert mle["FID_inf"] == 80.0 and mle["paper FID_inf"] == 97.61
    assert mle["paper KID SE"] == PAPER_TABLES["table1"]["rows"]["MLE"]["KID SE"] == 0.00021
    # The authors' later value and the range of their logged runs, from references.yaml.
    assert mle["later FID_inf"] == 63.86 and mle["logs runs"] == 10
    assert (mle["logs FID_inf min"], mle["logs FID_inf max"]) == (43.23, 273.3)
    extra = df.set_index("model").loc["Extra"]
    assert math.isnan(extra["FID_inf"]) and math.isnan(extra["paper FID_inf"])
    md = to_markdown(df, "Table 1")
    assert "| MLE | svhn_mle | 1 | 80.00 | - | 0.5 | 0.900 | 0.0700 |" in md
    assert "| Extra | x | 1 | - |" in md
    tex = to_latex(df, "FID_inf & KID_inf", "tab:t1")
    assert r"\caption{FID\_inf \& KID\_inf}" in tex and r"\toprule" in tex
    assert tex.count(r"\\") == 3  # header and two rows
    paths = write_table(df, tmp_path / "t1", title="Table 1")
    assert pd.read_csv(paths["csv"]).equals(df)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.csv", "t1.md", "t1.tex"]


def _run(seed: int, fid: float, fid_r2: float = 0.99, kid_r2: float = 0.95) -> dict:
    return {
        "training_seed": seed,
        "fid_inf": fid,
        "fid_se": 0.1 * (seed + 1),
        "fid_r2": fid_r2,
        "kid_inf": fid / 1000,
        "kid_se": 1e-4,
        "kid_r2": kid_r2,
        "kid_largest": fid / 900,
        "kid_largest_std": 1e-3,
        "train_seconds": 10.0 * (seed + 1),
    }


def test_a_metrics_table_gives_the_mean_and_spread_across_seeds_and_flags_poor_fits():
    rows = {
        "MLE": ("svhn_mle", [_run(0, 90.0), _run(1, 100.0, fid_r2=0.8), _run(2, 110.0)]),
        "VAE": ("svhn_vae", [_run(0, 60.0, kid_r2=0.3)]),
    }
    df = metrics_table(rows, "table1", real=_run(0, 2.0)).set_index("model")
    mle, vae, real = df.loc["MLE"], df.loc["VAE"], df.loc["Real (held-out)"]
    assert mle["seeds"] == 3 and mle["FID_inf"] == pytest.approx(100.0)
    assert mle["FID_inf sd"] == pytest.approx(10.0)  # n - 1 in the denominator
    assert mle["FID SE"] == pytest.approx(0.2) and mle["FID R2"] == 0.8  # mean SE, lowest R^2
    assert mle["KID"] == pytest.approx(100.0 / 900) and mle["KID sd"] == pytest.approx(10 / 900)
    assert mle["train seconds"] == pytest.approx(20.0)
    assert mle["flags"] == "FID R2 < 0.9 (seed 1)"
    assert vae["seeds"] == 1 and math.isnan(vae["FID_inf sd"]) and math.isnan(vae["KID sd"])
    assert vae["flags"] == "KID R2 < 0.9 (seed 0); single seed"
    assert real["cell"] == "-" and real["FID_inf"] == 2.0 and real["flags"] == ""
    assert math.isnan(real["seeds"])
    real_fit = metrics_table({}, real={**_run(0, 2.0, fid_r2=0.5), "training_seed": None})
    assert real_fit["flags"].iloc[0] == "FID R2 < 0.9"
    assert math.isnan(real["paper FID_inf"])  # the paper has no real row
    note = seeds_note(rows, "table1")
    assert "A single seed, so no spread across seeds: svhn_vae." in note
    assert "paper: Raj et al." in note and "later: the authors' later version" in note
    assert "kaem-main, the authors' logged runs" in note and "kaem-profile" in note
    assert "standard deviation across seeds" in note and "R^2 below 0.9" in note


def _quality(accuracy: float) -> dict:
    return {"holdout_accuracy": accuracy, "chance": 0.1, "threshold": 0.55, "n_classes": 10}


def test_every_score_sits_beside_its_extractors_accuracy_flagged_when_it_cannot_see():
    blind = {**_run(0, 0.0012), "extractor": "classifier", "extractor_quality": _quality(0.067)}
    sees = {**_run(0, 25.0), "extractor": "classifier", "extractor_quality": _quality(0.97)}
    unknown = {**_run(0, 30.0), "extractor": "classifier"}
    inception = {**_run(0, 40.0), "extractor": "inception", "extractor_quality": None}
    rows = {
        "blind": ("a", [blind]),
        "sees": ("b", [sees]),
        "unknown": ("c", [unknown]),
        "inception": ("d", [inception]),
    }
    df = metrics_table(rows).set_index("model")
    assert df.loc["blind", "extractor accuracy"] == 0.067
    assert df.loc["blind", "flags"].startswith("extractor accuracy 0.067 < 0.55 (chance 0.10)")
    assert df.loc["sees", "extractor accuracy"] == 0.97
    assert "extractor" not in df.loc["sees", "flags"]
    assert df.loc["unknown", "flags"].startswith("extractor accuracy not recorded")
    assert math.isnan(df.loc["inception", "extractor accuracy"])
    assert "extractor" not in df.loc["inception", "flags"]
    md = to_markdown(df.reset_index())
    assert "| blind | a | 1 | 0.0012 |" in md and "| 0.067 |" in md  # never 0.00
    assert "extractor accuracy" in seeds_note(rows)
    cells = cells_table(
        [{"name": "a", "dataset": "tiny", "model": "KAEM", "sampler": "IS", "seeds": (0,)}],
        {"a": [blind]},
    )
    assert cells.loc[0, "extractor accuracy"] == 0.067 and "0.067 < 0.55" in cells.loc[0, "flags"]
    table = extractors_table({"tiny": {**_quality(0.067), "test_accuracy": 0.05}})
    assert table.loc[0, "chance"] == 0.1 and "0.067 < 0.55" in table.loc[0, "flags"]


def test_the_classifiers_quality_travels_with_its_features_into_the_metrics(tmp_path):
    from kaem.features import Classifier, build_extractor, save_classifier

    classifier = Classifier(1, (8, 8), 10, width=2, feature_dim=3)
    classifier.reset_parameters(torch.Generator().manual_seed(0))
    save_classifier(classifier, tmp_path / "c.pt", quality=_quality(0.067))
    extractor = build_extractor("classifier", classifier=tmp_path / "c.pt")
    assert extractor.quality == _quality(0.067)
    data = tmp_path / "tiny.h5"
    from kaem.data import prepare_dataset

    prepare_dataset("tiny", data, n_train=60, n_test=10, progress=False)
    common = {"kind": "classifier", "progress": False}
    real = dataset_features(data, tmp_path / "real.npz", extractor, **common)
    held = dataset_features(data, tmp_path / "held.npz", extractor, start=20, **common)
    assert load_features(real)[1]["extractor_quality"] == _quality(0.067)
    kid = {"kid_subsets": 2, "kid_subset_size": 10, "progress": False}
    out = cell_metrics(real, held, [10, 20, 30], seed=0, **kid)
    assert out["extractor_quality"] == _quality(0.067)
    # Features of another classifier (another quality) are never compared with these.
    save_features(load_features(held)[0], tmp_path / "other.npz", {
        "extractor": "classifier", "extractor_quality": _quality(0.9)
    })  # fmt: skip
    with pytest.raises(ValueError, match="two different extractors"):
        cell_metrics(real, tmp_path / "other.npz", [10, 20, 30], seed=0, **kid)


def test_a_table_refuses_a_score_that_is_missing_or_not_finite(tmp_path):
    import runpy

    main = runpy.run_path(str(REPO / "workflow" / "scripts" / "tables.py"))["main"]
    record = {"steps": 1, "seconds": 0.5, "parameters": 10, "max_seconds": None}
    record.update(budget_reached=False, snapshots={})
    summary = write_json(record, tmp_path / "training.json")
    good = {**_run(0, 25.0), "extractor": "inception"}
    for name, scores in (("good", good), ("nan", {**good, "fid_inf": None})):
        (tmp_path / f"{name}.json").write_text(json.dumps(scores))
    table = {
        "name": "t",
        "kind": "metrics",
        "title": "t",
        "paper": None,
        "rows": {"A": "a"},
        "cells": [],
        "metrics": {"a": [str(tmp_path / "nan.json")]},
        "summaries": {"a": [str(summary)]},
        "real_metrics": None,
    }
    with pytest.raises(
        ValueError, match=r"nan\.json: scores missing or not finite: fid_inf = None"
    ):
        main(table, tmp_path / "t")
    assert not list(tmp_path.glob("t.*"))
    table["metrics"] = {"a": [str(tmp_path / "good.json")]}
    assert sorted(main(table, tmp_path / "t")) == ["csv", "md", "tex"]


def test_a_workflow_config_is_read_as_written(tmp_path):
    text = TINY.read_text().replace("train: {learning_rate: 0.001}", "train: {learning_rate: 1e-3}")
    assert "1e-3" in text
    good = tmp_path / "good.yaml"
    good.write_text(text)
    cfg = load_config(read_config([good], {"seeds": "[3]"}), SCHEMA)
    assert resolve_cell(cfg, "tiny_vae")["train"]["learning_rate"] == 0.001
    assert cell_seeds(cfg, "tiny_vae") == [3]  # a --config value read as YAML: a list of ints
    # A string that a YAML 1.1 loader (Snakemake's) left in place is still a number.
    parsed = yaml.safe_load(text)
    assert parsed["cells"]["tiny_vae"]["override"]["train"]["learning_rate"] == "1e-3"
    cfg = load_config(parsed, SCHEMA)
    assert from_dict(TrainConfig, resolve_cell(cfg, "tiny_vae")["train"]).learning_rate == 0.001
    # Two cells of one name: both lines are named, nothing is kept silently.
    dup = tmp_path / "dup.yaml"
    dup.write_text(text.replace("  tiny_vae:\n", "  tiny_is:\n    dataset: tiny\n  tiny_vae:\n", 1))
    first = text.splitlines().index("  tiny_is:") + 1
    second = dup.read_text().splitlines().index("  tiny_is:", first) + 1
    with pytest.raises(ConfigError, match=rf"dup\.yaml: cells\.tiny_is is given twice, at line "
                       rf"{first} and line {second}"):  # fmt: skip
        read_config([dup])


def test_a_metrics_table_says_which_likelihood_each_row_used():
    cfg = load_config(yaml.safe_load(PAPER.read_text()), SCHEMA)
    rows = cfg["tables"]["table1"]["rows"]
    cells = [cell_info(cfg, c)._asdict() for c in rows.values()]
    note = likelihood_note(rows, cells)
    assert note.startswith(
        "Likelihood per row: MLE, Thermo, VAE: Gaussian of variance 0.25 on images in [0, 1]; "
        "LEBM: Gaussian of variance 0.0225 on images in [0, 1]; DDPM: none."
    )
    assert "Pang et al.'s likelihood" in note and "noise prediction" in note
    # The demo's latent EBM shares the KAEM cells' likelihood: nothing to explain.
    demo = load_config(yaml.safe_load(DEMO.read_text()), SCHEMA)
    rows = demo["tables"]["criteria_mnist"]["rows"]
    note = likelihood_note(rows, [cell_info(demo, c)._asdict() for c in rows.values()])
    assert "Gaussian of variance 0.1" in note and "Pang" not in note and "DDPM" not in note
    # The DDPM's rows carry the authors' newest value and the earlier page's.
    df = metrics_table({"DDPM": ("svhn_ddpm", {}), "LEBM": ("svhn_lebm", {})}, "table1")
    assert list(df["later FID_inf"]) == [20.0, 63.69]
    assert list(df["logs FID_inf min"]) == [50.85, 272.9]


def test_a_sampler_is_a_ddpm_cells_setting_only():
    cfg = tiny_config()
    cfg["cells"]["tiny_ddpm"] = {
        "dataset": "tiny",
        "preset": "ddpm_svhn",
        "override": {"model": TINY_DDPM},
        "sampler": {"scheduler": "ddim", "steps": 4},
    }
    filled = load_config(cfg, SCHEMA)
    assert cell_sampler(filled, "tiny_ddpm") == {"scheduler": "ddim", "steps": 4, "eta": 0.0}
    assert cell_sampler(filled, "tiny_is") == {}
    assert cell_info(filled, "tiny_ddpm").likelihood_variance is None
    bad = copy.deepcopy(cfg)
    bad["cells"]["tiny_is"]["sampler"] = {"scheduler": "ddim"}
    bad["cells"]["tiny_ddpm"]["sampler"]["steps"] = 21
    with pytest.raises(WorkflowConfigError) as err:
        load_config(bad, SCHEMA)
    assert "cells.tiny_is.sampler: only a DDPM cell draws with a scheduler" in str(err.value)
    assert "cells.tiny_ddpm.sampler.steps: 21 exceeds the model's T = 20 steps" in str(err.value)
    bad = copy.deepcopy(cfg)
    bad["cells"]["tiny_ddpm"]["sampler"]["scheduler"] = "euler"
    with pytest.raises(WorkflowConfigError, match=r"cells\.tiny_ddpm\.sampler\.scheduler: "):
        load_config(bad, SCHEMA)
    bad = copy.deepcopy(cfg)
    bad["cells"]["tiny_ddpm"]["override"]["model"] = {**TINY_DDPM, "channels": [8] * 5}
    with pytest.raises(WorkflowConfigError, match=r"cells\.tiny_ddpm\.override: .*model\.channels"):
        check_models(check_config(load_config(bad, SCHEMA)))


def test_every_reference_figure_names_a_described_source(tmp_path):
    from kaem.pipeline.references import load_references, reference_caption

    refs = load_references()
    assert set(refs["tables"]) == set(PAPER_TABLES)
    for name, table in refs["tables"].items():
        caption = reference_caption(name, table["rows"])
        for row in table["rows"].values():
            for source in row.get("logs", {}):
                assert refs["sources"][source] in caption
    assert "later" not in reference_caption("appendix_h_svhn", ["MLE", "Thermo"])
    bad = tmp_path / "refs.yaml"
    bad.write_text(
        "sources: {paper: p}\ntables:\n  t:\n    title: x\n    rows:\n"
        "      MLE: {logs: {unknown-repo: [1.0]}}\n"
    )
    with pytest.raises(ValueError, match=r"tables\.t\.rows\.MLE\.logs: sources \['unknown-repo'\]"):
        load_references(str(bad))


def test_a_cells_seeds_become_its_training_seed():
    cfg = load_config(tiny_config(), SCHEMA)
    assert cell_seeds(cfg, "tiny_is") == [0, 1] and cell_seeds(cfg, "tiny_vae") == [0]
    assert resolve_cell(cfg, "tiny_is", 1)["train"]["seed"] == 1
    assert "seed" not in resolve_cell(cfg, "tiny_is")["train"]
    assert run_key(resolve_cell(cfg, "tiny_is", 0)) != run_key(resolve_cell(cfg, "tiny_is", 1))
    assert cell_info(cfg, "tiny_is").seeds == (0, 1)
    # Top-level seeds apply to every cell without its own; a configured train.seed otherwise.
    raw = tiny_config()
    raw["seeds"] = [3, 5]
    raw["cells"]["tiny_vae"]["seeds"] = [7]
    cfg = load_config(raw, SCHEMA)
    assert cell_seeds(cfg, "tiny_is") == [0, 1] and cell_seeds(cfg, "tiny_thermo") == [3, 5]
    assert cell_seeds(cfg, "tiny_vae") == [7]
    raw = tiny_config()
    raw["cells"]["tiny_vae"]["override"]["train"]["seed"] = 9
    assert cell_seeds(load_config(raw, SCHEMA), "tiny_vae") == [9]


def test_a_table_with_one_chain_thermodynamic_cells_says_what_that_means(tmp_path):
    cells = [
        {"name": "svhn_mle", "criterion": "ula", "n_chains": None},
        {"name": "svhn_thermo", "criterion": "thermodynamic", "n_chains": 1},
        {"name": "svhn_thermo_s8", "criterion": "thermodynamic", "n_chains": 8},
    ]
    note = thermodynamic_note(cells)
    assert "(svhn_thermo)" in note and "chains = 1" in note and "Riemann sum" in note
    assert thermodynamic_note(cells[::2]) is None
    df = metrics_table({"Thermo": ("svhn_thermo", {})}, "table1")
    paths = write_table(df, tmp_path / "t1", title="Table 1", note=note)
    assert paths["md"].read_text().rstrip().endswith(note)
    assert "Riemann sum" in paths["tex"].read_text().split(r"\caption{")[1].split("}")[0]


def test_the_benchmark_table_lists_timings_then_speed_ups_with_the_papers_claims():
    bench = {
        "device": "cpu",
        "results": [
            {"name": "generate_kaem_svhn", "seconds": 0.5, "peak_mib": 300.0, "repeats": 3},
            {"name": "generate_vae_svhn", "seconds": 2.0, "peak_mib": 100.0, "repeats": 3},
        ],
        "ratios": {"generate_vae_svhn/generate_kaem_svhn": 4.0},
    }
    df = benchmark_table(bench).set_index("benchmark")
    assert df.loc["generate_kaem_svhn", "seconds"] == 0.5
    assert math.isnan(df.loc["generate_kaem_svhn", "speed-up"])
    assert df.loc["generate_vae_svhn/generate_kaem_svhn", "speed-up"] == 4.0
    assert "faster than the VAE" in df.loc["generate_vae_svhn/generate_kaem_svhn", "paper"]
    assert "| 4x |" in to_markdown(df.reset_index())


# ----------------------------------------------------------------------------- the paper's plan


@pytest.mark.workflow
def test_a_dry_run_of_the_paper_plans_every_cell(tmp_path):
    proc = snakemake(tmp_path, PAPER, "--dry-run")
    assert_ok(proc)
    out = proc.stdout + proc.stderr
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], re.M))
    # App. G.1: 2 NIST datasets x 4 reference priors; Tables 1-2: SVHN and CelebA x (MLE,
    # Thermo, VAE, LEBM, DDPM); App. H: SVHN and CelebA x (MLE, Thermo) with RBF bases;
    # CIFAR-10 x (MLE, Thermo, VAE, LEBM, DDPM).
    cells = 2 * 4 + 2 * 5 + 2 * 2 + 5
    # Three seeds, each its own training job and generated set, for the cells of Tables 1-2,
    # CIFAR-10, the LEBM and the DDPM; one for App. G.1 and App. H.
    runs = 3 * (2 * 5 + 5) + 2 * 4 + 2 * 2
    assert int(stats["train"]) == int(stats["sample"]) == int(stats["metrics"]) == runs == 57
    assert int(stats["prepare_data"]) == 5 and int(stats["classifier"]) == 2
    assert int(stats["features_real"]) == 5 and int(stats["features_generated"]) == runs
    # One job per figure and per table: three figures a cell, two more of a KAEM's prior,
    # one schedule per thermodynamic cell; the paper tables, cells, extractors, benchmark.
    kaem_cells, thermo_cells = cells - 3 * 3, 5
    assert int(stats["figure"]) == 3 * cells + 2 * kaem_cells + thermo_cells == 122
    assert int(stats["benchmark"]) == int(stats["figure_benchmark"]) == 1
    assert int(stats["table"]) == len(yaml.safe_load(PAPER.read_text())["tables"]) + 3 + 5
    # App. A's five cost curves: a job, a figure and a table each.
    assert int(stats["benchmark_sweep"]) == int(stats["figure_sweep"]) == 5
    assert int(stats["total"]) == 390
    planned = re.findall(r"rule train:.*?wildcards: cell=(\w+), seed=(\d+)", out, re.S)
    assert {c for c, _ in planned} == set(yaml.safe_load(PAPER.read_text())["cells"])
    seeds = {c: sorted(int(s) for k, s in planned if k == c) for c, _ in planned}
    assert seeds["svhn_mle"] == seeds["cifar10_lebm"] == seeds["celeba_ddpm"] == [0, 1, 2]
    assert seeds["svhn_rbf_mle"] == seeds["mnist_is_none"] == [0]
    # Colour datasets train on a GPU; the criterion of every cell is the paper's.
    cfg = load_config(yaml.safe_load(PAPER.read_text()), SCHEMA)
    criteria = {c: cell_info(cfg, c).criterion for c in cfg["cells"]}
    assert [c for c, k in criteria.items() if k == "thermodynamic"] == [
        "svhn_thermo",
        "svhn_rbf_thermo",
        "celeba_thermo",
        "celeba_rbf_thermo",
        "cifar10_thermo",
    ]
    assert [c for c, k in criteria.items() if k == "lebm"] == [
        "svhn_lebm",
        "celeba_lebm",
        "cifar10_lebm",
    ]
    assert [c for c, k in criteria.items() if k == "ddpm"] == [
        "svhn_ddpm",
        "celeba_ddpm",
        "cifar10_ddpm",
    ]
    # The paper's DDPM cells draw with full ancestral sampling (no sampler of their own).
    assert not any(cell_sampler(cfg, c) for c in cfg["cells"])
    assert {k for c, k in criteria.items() if c.endswith("mle")} == {"ula"}
    assert cell_sizes(cfg, "svhn_mle")[-1] == 20_000 and cell_sizes(cfg, "svhn_rbf_mle") == list(
        range(1000, 3001, 200)
    )
    assert {t["paper"] for t in cfg["tables"].values()} >= set(PAPER_TABLES)


@pytest.mark.workflow
def test_the_workflow_lints_clean(tmp_path):
    proc = snakemake(tmp_path, TINY, "--lint")
    assert_ok(proc)
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_a_bad_config_stops_snakemake_before_any_job(tmp_path):
    bad = write_config(tmp_path / "bad.yaml", _set(tiny_config(), "metrics.seed", "zero"))
    proc = snakemake(tmp_path, bad, "--cores", "1")
    assert proc.returncode != 0
    assert "metrics.seed: 'zero' is not of type 'integer'" in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
    # Two cells of one name, which Snakemake's own YAML reading would silently merge.
    text = TINY.read_text()
    dup = tmp_path / "dup.yaml"
    dup.write_text(text.replace("  tiny_vae:\n", "  tiny_is:\n    dataset: tiny\n  tiny_vae:\n", 1))
    proc = snakemake(tmp_path, dup, "--cores", "1")
    assert proc.returncode != 0
    assert f"{dup}: cells.tiny_is is given twice, at line 15 and line" in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


# ----------------------------------------------------------------------------- the tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The whole tiny workflow, once for the tests below (about a minute on two cores)."""
    workdir = tmp_path_factory.mktemp("tiny")
    proc = snakemake(workdir, TINY, "--cores", "2")
    assert_ok(proc)
    return workdir


@pytest.mark.workflow
def test_tiny_run_tables_have_their_rows_and_finite_values(tiny_run):
    tables = tiny_run / "results" / "tables"
    for name in ("tiny", "cells", "extractors", "benchmark", "sweep_prior_samples"):
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{name}.{ext}").stat().st_size > 0
    # App. A's cost curve of prior sampling: every series at 1, 10 and 100 samples, and the
    # speed-up of Langevin over ITS at each.
    sweep = pd.read_csv(tables / "sweep_prior_samples.csv")
    points = sweep[sweep["seconds"].notna()]
    series = SWEEPS["prior_samples"].series
    assert len(points) == len(series) * 3 and (points["seconds"] > 0).all()
    ratio = sweep.set_index(["series", "value"])["speed-up"]
    assert np.isfinite(ratio["Langevin, 60 steps (81) / ITS, NIST prior (3,240)"]).all()
    compiled = "ITS, NIST prior (3,240) / ITS compiled, NIST prior (3,240)"
    assert np.isfinite(ratio[compiled]).all()
    assert set(pd.read_csv(tables / "sweep_is_step_nz.csv")["value"]) == {10, 20}
    ours = ["FID_inf", "FID SE", "FID R2", "KID_inf", "KID SE", "KID R2", "KID"]
    tiny = pd.read_csv(tables / "tiny.csv")
    assert list(tiny["model"]) == ["MLE", "Thermo", "VAE", "Real (held-out)"]
    assert list(tiny["cell"]) == ["tiny_is", "tiny_thermo", "tiny_vae", "-"]
    assert list(tiny["seeds"].iloc[:3]) == [2, 1, 1] and math.isnan(tiny["seeds"].iloc[3])
    assert np.isfinite(tiny[ours].to_numpy()).all()
    assert (tiny["FID_inf"].iloc[:3] > 0).all() and tiny[["FID R2", "KID R2"]].le(1).all().all()
    # The spread across seeds: the mean and sd of tiny_is's two runs, none for one seed.
    runs = [json.loads((tiny_run / metrics_file("tiny_is", s)).read_text()) for s in (0, 1)]
    fids = [r["fid_inf"] for r in runs]
    assert tiny["FID_inf"].iloc[0] == pytest.approx(np.mean(fids))
    assert tiny["FID_inf sd"].iloc[0] == pytest.approx(np.std(fids, ddof=1))
    assert tiny["FID_inf sd"].iloc[1:].isna().all()
    assert "single seed" in tiny["flags"].iloc[1] and "single seed" not in str(tiny["flags"][0])
    # Held-out real digits against the reference ones are far closer than any model's.
    assert tiny["FID_inf"].iloc[3] < tiny["FID_inf"].iloc[:3].min() / 3
    assert list(tiny["paper FID_inf"].iloc[:3]) == [97.61, 148.84, 62.83]
    assert list(tiny["later FID_inf"].iloc[:3]) == [63.86, 108.74, 107.80]
    assert tiny["logs FID_inf min"].iloc[0] == 43.23 and tiny["logs runs"].iloc[0] == 10
    md = (tables / "tiny.md").read_text()
    assert "A single seed, so no spread across seeds: tiny_thermo, tiny_vae." in md
    assert "arXiv:2506.14167v9" in md and "julia-kaem at commit 2395f56" in md
    cells = pd.read_csv(tables / "cells.csv")
    assert list(cells["cell"]) == ["tiny_is", "tiny_is", "tiny_thermo", "tiny_vae"]
    assert list(cells["seed"]) == [0, 1, 0, 0]
    assert list(cells["sampler"]) == ["IS", "IS", "thermodynamic (N_t=3, S=1)", "ELBO"]
    assert (cells["steps"] == 30).all() and np.isfinite(cells[ours].to_numpy()).all()
    extractors = pd.read_csv(tables / "extractors.csv")
    assert list(extractors["dataset"]) == ["tiny"]
    # The tiny classifier is a real classifier: far above the 10% of guessing.
    assert extractors["holdout accuracy"].iloc[0] > 0.8
    assert extractors["test accuracy"].iloc[0] > 0.7
    bench = pd.read_csv(tables / "benchmark.csv").set_index("benchmark")
    runs = bench.loc[["its_prior", "langevin_prior_81", "is_step"]]
    assert (runs["seconds"] > 0).all() and np.isfinite(runs["peak MiB"]).all()
    ratio = bench.loc["langevin_prior_81/its_prior", "speed-up"]
    assert ratio == pytest.approx(
        runs.loc["langevin_prior_81", "seconds"] / runs.loc["its_prior", "seconds"], rel=1e-6
    )
    assert "| MLE | tiny_is | 2 |" in (tables / "tiny.md").read_text()
    assert r"\begin{tabular}" in (tables / "tiny.tex").read_text()


@pytest.mark.workflow
def test_tiny_run_figures_exist_and_are_not_blank(tiny_run):
    figures = tiny_run / "results" / "figures"
    expected = ["benchmark.png"]
    for cell in ("tiny_is", "tiny_thermo", "tiny_vae"):
        expected += [f"{cell}/{k}.png" for k in ("samples", "training_curve", "extrapolation")]
    for cell in ("tiny_is", "tiny_thermo"):  # KAEM cells: the learned priors (Fig. 3)
        expected += [f"{cell}/prior_grid.png", f"{cell}/prior_top.png"]
    expected.append("tiny_thermo/temperature_schedule.png")  # Figs. 10-11
    expected += ["benchmark/prior_samples.png", "benchmark/is_step_nz.png"]  # App. A's curves
    found = sorted(str(p.relative_to(figures)) for p in figures.rglob("*.png"))
    assert found == sorted(expected)
    for name in expected:
        assert not_blank(figures / name) > 0.01, name


@pytest.mark.workflow
def test_touching_one_cell_redraws_only_its_own_figures_and_tables(tiny_run):
    metrics = tiny_run / metrics_file("tiny_is", 1)
    text, stat = metrics.read_text(), metrics.stat()
    # Changed content (Snakemake ignores a newer mtime whose checksum is unchanged).
    metrics.write_text(text + "\n")
    try:
        proc = snakemake(tiny_run, TINY, "--dry-run")
    finally:
        metrics.write_text(text)
        os.utime(metrics, (stat.st_atime, stat.st_mtime))
    assert_ok(proc)
    planned = {}  # rule -> outputs of its planned jobs
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout + proc.stderr):
        head = re.match(r"(?:local)?rule (\w+):", block)
        output = re.search(r"^\s+output: (.*)$", block, re.M)
        if head and output:
            planned.setdefault(head.group(1), []).extend(output.group(1).split(", "))
    assert planned["figure"] == ["results/figures/tiny_is/extrapolation.png"]
    # The tables with a tiny_is row (the paper table and the list of cells), no others.
    tables = {Path(f).stem for f in planned["table"]}
    assert tables == {"tiny", "cells"}, tables
    assert set(planned) == {"figure", "table"}, set(planned)


@pytest.mark.workflow
def test_tiny_run_artifacts_carry_their_settings_and_seeds(tiny_run):
    res = tiny_run / "results"
    cfg = load_config(tiny_config(), SCHEMA)
    runs = [(cell, seed) for cell in cfg["cells"] for seed in cell_seeds(cfg, cell)]
    assert runs == [("tiny_is", 0), ("tiny_is", 1), ("tiny_thermo", 0), ("tiny_vae", 0)]
    for cell, seed in runs:
        # The resolved settings of the seed are written next to its trained model.
        run = res / "train" / cell / f"seed{seed}"
        written = yaml.safe_load((run / "config.yaml").read_text())
        assert written == resolve_cell(cfg, cell, seed) and written["train"]["seed"] == seed
        work = run / f"work-{run_key(written, cfg['datasets']['tiny'])}"
        assert (work / "checkpoint.pt").exists()
        meta = samples_metadata(res / "samples" / cell / f"seed{seed}.h5")
        assert meta["n"] == 250 and meta["seed"] == 1 + seed
        assert meta["cell"] == f"{cell}/seed{seed}"
        metrics = json.loads((tiny_run / metrics_file(cell, seed)).read_text())
        assert metrics["sizes"] == [100, 150, 200, 250] and metrics["seed"] == 2
        assert metrics["n_generated"] == 250 and metrics["n_real"] == 1000
        assert metrics["extractor"] == "classifier" and metrics["training_seed"] == seed
        feats, fmeta = load_features(res / "features" / "cells" / cell / f"seed{seed}.npz")
        assert feats.shape == (250, 16) and fmeta["n"] == 250
    # Two seeds are two trainings: different models, different generated sets.
    models = [load_model(res / "train" / "tiny_is" / f"seed{s}" / "model.pt") for s in (0, 1)]
    pairs = zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True)
    assert not all(torch.equal(a, b) for a, b in pairs)
    # The generated set is reproducible from the trained model and the recorded seed.
    again = models[1].generate(100, torch.Generator().manual_seed(2))
    stored = read_samples(res / "samples" / "tiny_is" / "seed1.h5", 0, 100)
    assert np.array_equal(stored, (again * 255).round().to(torch.uint8).numpy())
    real, rmeta = load_features(res / "features" / "tiny" / "real.npz")
    assert real.shape == (1000, 16) and rmeta["extractor"] == "classifier"
    # The real-vs-real row scores the 250 training digits after the 1,000 reference ones.
    held, hmeta = load_features(res / "features" / "tiny" / "real_holdout.npz")
    assert held.shape == (250, 16) and hmeta["start"] == 1000 and hmeta["n"] == 250
    assert rmeta["start"] == 0 and rmeta["n"] == 1000  # indices 0-999: disjoint
    # Logs of every job exist (progress bars and results go there).
    log = tiny_run / "logs" / "train" / "tiny_is" / "seed1.log"
    assert "trained 30 steps" in log.read_text()
    assert "FID_inf" in (tiny_run / "logs" / "metrics" / "tiny_vae" / "seed0.log").read_text()


@pytest.mark.workflow
def test_tiny_run_is_complete_and_a_finished_cell_is_never_retrained(tiny_run):
    proc = snakemake(tiny_run, TINY, "--dry-run")
    assert_ok(proc)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    model = tiny_run / "results" / "train" / "tiny_thermo" / "seed0" / "model.pt"
    before = hashlib.sha256(model.read_bytes()).hexdigest()
    log_before = (model.parent / "log.csv").read_text()
    # Even when Snakemake is told to rerun the job, the finished checkpoint makes it a no-op.
    proc = snakemake(tiny_run, TINY, "--cores", "1", "--force", str(model.relative_to(tiny_run)))
    assert_ok(proc)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == before
    assert (model.parent / "log.csv").read_text() == log_before
    job_log = (tiny_run / "logs" / "train" / "tiny_thermo" / "seed0.log").read_text()
    assert "trained 30 steps" in job_log and re.search(r"\b30/30\b", job_log)
    assert not re.search(r"\b(?:[0-9]|[12][0-9])/30\b", job_log)  # no step was computed


@pytest.mark.workflow
def test_tiny_run_builds_an_html_report_with_every_figure_and_table(tiny_run):
    report = tiny_run / "report.html"
    proc = snakemake(tiny_run, TINY, "--report", str(report))
    assert_ok(proc)
    html = report.read_text()
    for name in (
        "temperature_schedule.png",
        "prior_top.png",
        "benchmark.png",
        "prior_samples.png",
        "tiny.csv",
        "extractors.csv",
        "Fig. 3",
        "Chong and Forsyth",
    ):
        assert name in html, name


# ----------------------------------------------------------------------------- resuming


@pytest.mark.workflow
def test_a_latent_ebm_cell_runs_like_the_others(tmp_path):
    """Pang et al.'s LEBM on the tiny digits: planned with only its own figures (it has no
    quadrature prior to draw) and trained by the same rule as a KAEM cell. Sampling, scoring
    and drawing read only the model's generate() and the images, tested on the other kinds."""
    cfg = tiny_config()
    cfg["cells"] = {
        "tiny_lebm": {
            "dataset": "tiny",
            "preset": "lebm_svhn",
            "override": {"model": TINY_LEBM, "train": {"langevin": {"n_steps": 5}}},
        }
    }
    cfg["tables"] = {}
    config = write_config(tmp_path / "lebm.yaml", cfg)
    dry = snakemake(tmp_path, config, "--cores", "1", "--dry-run", "all")
    assert_ok(dry)
    figures = set(re.findall(r"results/figures/tiny_lebm/(\w+)\.png", dry.stdout))
    assert figures == {"samples", "training_curve", "extrapolation"}, figures
    run = "results/train/tiny_lebm/seed0"
    assert_ok(snakemake(tmp_path, config, "--cores", "1", f"{run}/model.pt"))
    model = load_model(tmp_path / run / "model.pt")
    assert type(model).__name__ == "LEBM"
    log = pd.read_csv(tmp_path / run / "log.csv")
    assert list(log["step"]) == list(range(1, 31)) and np.isfinite(log["energy_gap"]).all()
    images = model.generate(8, torch.Generator().manual_seed(0))
    assert images.shape == (8, 1, 8, 8) and torch.isfinite(images).all()


@pytest.mark.workflow
def test_a_ddpm_cell_is_planned_trained_sampled_and_scored(tmp_path):
    """A tiny DDPM through the whole chain: its figures planned (no prior to draw), trained by
    the train rule, its generated set drawn with the cell's DDIM sampler (cheap: 4 steps),
    features, FID/KID and a table whose caption says it has no likelihood."""
    cfg = tiny_config()
    cfg["cells"] = {
        "tiny_ddpm": {
            "dataset": "tiny",
            "preset": "ddpm_svhn",
            "override": {"model": TINY_DDPM, "train": {"learning_rate": 0.001}},
            "sampler": {"scheduler": "ddim", "steps": 4},
        }
    }
    cfg["tables"] = {
        "ddpm": {"title": "Tiny DDPM", "paper": "table1", "rows": {"DDPM": "tiny_ddpm"}}
    }
    cfg["benchmark"]["enabled"] = False
    config = write_config(tmp_path / "ddpm.yaml", cfg)
    dry = snakemake(tmp_path, config, "--cores", "1", "--dry-run", "all")
    assert_ok(dry)
    figures = set(re.findall(r"results/figures/tiny_ddpm/(\w+)\.png", dry.stdout))
    assert figures == {"samples", "training_curve", "extrapolation"}, figures
    proc = snakemake(tmp_path, config, "--cores", "2", "results/tables/ddpm.csv", timeout=600)
    assert_ok(proc)
    run = tmp_path / "results" / "train" / "tiny_ddpm" / "seed0"
    assert type(load_model(run / "model.pt")).__name__ == "DDPM"
    log = pd.read_csv(run / "log.csv")
    assert list(log["step"]) == list(range(1, 31)) and np.isfinite(log["noise_mse"]).all()
    samples = tmp_path / "results" / "samples" / "tiny_ddpm" / "seed0.h5"
    meta = samples_metadata(samples)
    assert json.loads(meta["sampler"]) == {"scheduler": "ddim", "steps": 4, "eta": 0.0}
    drawn = read_samples(samples)
    assert drawn.shape == (250, 1, 8, 8)
    # Drawn with the cell's four DDIM steps from the sampling seed, not the model's default.
    model = load_model(run / "model.pt")
    for options, same in (({"scheduler": "ddim", "steps": 4, "eta": 0.0}, True), (None, False)):
        again = write_samples(
            model,
            tmp_path / "again.h5",
            250,
            generator=torch.Generator().manual_seed(1),
            batch_size=100,
            progress=False,
            options=options,
        )
        assert np.array_equal(read_samples(again), drawn) == same
    metrics = json.loads((tmp_path / metrics_file("tiny_ddpm", 0)).read_text())
    assert math.isfinite(metrics["fid_inf"]) and metrics["sizes"] == [100, 150, 200, 250]
    table = pd.read_csv(tmp_path / "results" / "tables" / "ddpm.csv")
    assert list(table["model"]) == ["DDPM"] and table["later FID_inf"].iloc[0] == 20.0
    md = (tmp_path / "results" / "tables" / "ddpm.md").read_text()
    assert "DDPM: none" in md and "noise prediction" in md


@pytest.mark.workflow
def test_a_killed_training_resumes_from_its_checkpoint(tmp_path):
    cfg = tiny_config()
    cfg["cells"] = {"tiny_thermo": cfg["cells"]["tiny_thermo"]}
    cfg["cells"]["tiny_thermo"]["override"]["train"].update(max_steps=100, checkpoint_every=5)
    cfg["tables"] = {}
    config = write_config(tmp_path / "resume.yaml", cfg)
    target = "results/train/tiny_thermo/seed0/model.pt"
    cmd = snakemake_command(tmp_path, config, "--cores", "1", target)
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    work = tmp_path / "results" / "train" / "tiny_thermo" / "seed0"
    checkpoints: list[Path] = []
    deadline = time.monotonic() + HANG_S
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            checkpoints = list(work.glob("work-*/checkpoint.pt"))
            if checkpoints and torch.load(checkpoints[0], weights_only=False)["step"] >= 10:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training finished before it could be interrupted"
    finally:
        # Jobs run in the driver's process group: this kills the training process too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (work / "model.pt").exists()  # nothing half-published
    step = torch.load(checkpoints[0], weights_only=False)["step"]
    assert 10 <= step < 100
    assert_ok(snakemake(tmp_path, config, "--unlock"))
    proc = snakemake(tmp_path, config, "--cores", "1", "--rerun-incomplete", target)
    assert_ok(proc)
    log = pd.read_csv(work / "log.csv")
    assert list(log["step"]) == list(range(1, 101))  # every step once, none repeated
    job_log = (tmp_path / "logs" / "train" / "tiny_thermo" / "seed0.log").read_text()
    first = int(re.search(r"\b(\d+)/100\b", job_log).group(1))
    assert first >= step  # the rerun started from the checkpoint, not from step 0


# ----------------------------------------------------------------------------- data readers


def _svhn_mat(path: Path, n: int, rng) -> np.ndarray:
    import scipy.io

    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    scipy.io.savemat(path, {"X": x, "y": rng.integers(1, 11, size=(n, 1)).astype(np.uint8)})
    return x.transpose(3, 2, 0, 1)  # (n, 3, 32, 32)


def _celeba_zip(path: Path, n: int) -> Path:
    """Aligned-CelebA-sized JPEGs (178x218): red grows with the column, blue = 40 + 5 i."""
    red = np.broadcast_to(np.arange(178) * 255.0 / 177, (218, 178))
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            rgb = np.stack([red, np.full((218, 178), 128.0), np.full((218, 178), 40.0 + 5 * i)])
            buf = io.BytesIO()
            Image.fromarray(np.rint(rgb).astype(np.uint8).transpose(1, 2, 0)).save(
                buf, format="JPEG", quality=98, subsampling=0
            )
            zf.writestr(f"img_align_celeba/{i + 1:06d}.jpg", buf.getvalue())
    return path


INCEPTION = find_inception_weights() is not None


@pytest.fixture(scope="module")
def readers_run(tmp_path_factory):
    """prepare_data on a small SVHN .mat and CelebA zip, and Inception features of 6 images."""
    workdir = tmp_path_factory.mktemp("readers")
    rng = np.random.default_rng(0)
    svhn = _svhn_mat(workdir / "train_32x32.mat", 40, rng)
    _celeba_zip(workdir / "img_align_celeba.zip", 12)
    cfg = tiny_config()
    cfg["datasets"] = {
        "svhn": {"features": "inception", "source": "train_32x32.mat", "n_train": 30, "n_test": 5},
        "celeba": {
            "features": "inception",
            "source": "img_align_celeba.zip",
            "n_train": 8,
            "n_test": 2,
        },
        "tiny": {"features": "inception"},
    }
    cfg["common_override"] = {}
    cfg["cells"] = {
        "svhn_mle": {
            "dataset": "svhn",
            "preset": "svhn",
            "override": {"train": {"batch_size": 10}},
        },
        "celeba_vae": {
            "dataset": "celeba",
            "preset": "vae_celeba",
            "override": {"train": {"batch_size": 4}},
        },
    }
    cfg["tables"] = {}
    cfg["metrics"]["real_images"] = 6
    config = write_config(workdir / "readers.yaml", cfg)
    targets = ["results/data/svhn.h5", "results/data/celeba.h5"]
    if INCEPTION:
        targets.append("results/features/tiny/real.npz")
    proc = snakemake(workdir, config, "--cores", "2", *targets)
    assert_ok(proc)
    return workdir, svhn


@pytest.mark.workflow
def test_prepare_data_reads_a_user_svhn_mat_file(readers_run):
    workdir, svhn = readers_run
    images, labels = load_images(workdir / "results" / "data" / "svhn.h5", "train")
    assert images.shape == (30, 3, 32, 32) and set(labels) <= set(range(10))
    with h5py.File(workdir / "results" / "data" / "svhn.h5") as f:
        index = f["train/source_index"][...]
        assert "SVHN .mat" in f.attrs["source"]
    assert np.array_equal(images, svhn[index])  # pixels and layout exactly the file's
    test, _ = load_images(workdir / "results" / "data" / "svhn.h5", "test")
    assert test.shape == (5, 3, 32, 32)


@pytest.mark.workflow
def test_prepare_data_reads_a_user_celeba_zip_centre_cropped(readers_run):
    workdir, _ = readers_run
    path = workdir / "results" / "data" / "celeba.h5"
    images, labels = load_images(path, "train")
    assert images.shape == (8, 3, 64, 64) and (labels == -1).all()
    with h5py.File(path) as f:
        index = f["train/source_index"][...]
    blue = images[:, 2].mean(axis=(1, 2))
    assert np.abs(blue - (40 + 5 * index)).max() < 3  # each image is the JPEG it claims
    # The centre 140 columns of 178 were kept: red runs from about 27 to 228, not 0 to 255.
    red = images[:, 0].mean(axis=(0, 1))
    assert 20 < red[0] < 40 and 215 < red[-1] < 235 and (np.diff(red) > 0).all()


@pytest.mark.workflow
@pytest.mark.skipif(not INCEPTION, reason="no Inception weights (run `kaem fetch-weights`)")
def test_inception_features_of_real_images_through_the_workflow(readers_run):
    from kaem.features import InceptionFeatures

    workdir, _ = readers_run
    feats, meta = load_features(workdir / "results" / "features" / "tiny" / "real.npz")
    assert feats.shape == (6, 2048) and meta["extractor"] == "inception" and meta["n"] == 6
    assert np.isfinite(feats).all() and (feats >= 0).all()  # pool3 follows a ReLU
    assert feats.std(axis=0).max() > 0  # different digits, different features
    images, _ = load_images(workdir / "results" / "data" / "tiny.h5", "train")
    direct = InceptionFeatures(download=False)(images[:6]).numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-4)


def test_write_json_refuses_non_finite_results_naming_each_and_writes_nothing(tmp_path):
    path = write_json({"a": 1.0, "c": np.float32(2), "d": None}, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"a": 1.0, "c": 2.0, "d": None}
    before = path.read_bytes()
    bad = {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float32(2)}
    with pytest.raises(FloatingPointError, match=r"x\.json.* a = nan, b\[1\] = inf$"):
        write_json(bad, path)
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def test_the_names_the_schema_and_config_accept_are_the_codes_own():
    import typing

    from kaem.config import ActivationName, BasisName
    from kaem.data import DATASETS
    from kaem.model.bases import BASES
    from kaem.model.kan import ACTIVATIONS
    from kaem.pipeline.tables import PAPER_TABLES
    from kaem.presets import PRESETS

    schema = SCHEMA["properties"]
    assert sorted(schema["datasets"]["propertyNames"]["enum"]) == sorted(DATASETS)
    cell = schema["cells"]["additionalProperties"]["properties"]
    assert sorted(cell["preset"]["enum"]) == sorted(PRESETS)
    paper = schema["tables"]["additionalProperties"]["properties"]["paper"]["enum"]
    assert sorted(p for p in paper if p is not None) == sorted(PAPER_TABLES)
    assert sorted(typing.get_args(BasisName)) == sorted(BASES)
    assert sorted(typing.get_args(ActivationName)) == sorted(ACTIVATIONS)
