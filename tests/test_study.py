"""The study at matched compute (config/study.yaml): its configuration and the checks that
stop a bad one before any job, the tables' and figures' new pieces, and, marked ``workflow``,
its miniature (tests/workflow_configs/study_tiny.yaml: the five models on 8x8 digits, a
three-second budget, two seeds) run end to end."""

from __future__ import annotations

import copy
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import TINY_MODEL, tiny_images
from test_workflow import (
    REPO,
    SCHEMA,
    _set,
    assert_ok,
    not_blank,
    snakemake,
    write_config,
)

from kaem.config import TrainConfig, from_dict
from kaem.data import read_samples, samples_metadata, write_samples
from kaem.model import build_model
from kaem.pipeline.artifacts import publish_snapshot, training_summary, write_json
from kaem.pipeline.config import (
    WorkflowConfigError,
    cell_budget,
    cell_info,
    cell_seeds,
    check_config,
    check_models,
    has_evidence,
    load_config,
    resolve_cell,
    snapshot_times,
)
from kaem.pipeline.plots import plot_fid_curve, plot_sample_grids
from kaem.pipeline.tables import (
    COMPUTE_COLUMNS,
    EVIDENCE_COLUMNS,
    compute_columns,
    compute_note,
    curve_records,
    curve_table,
    evidence_columns,
    evidence_note,
    extractor_flag,
    extractors_table,
    metrics_table,
    run_record,
    seeds_note,
    to_markdown,
)
from kaem.training import snapshot_name, train

STUDY = REPO / "config" / "study.yaml"
STUDY_TINY = REPO / "tests" / "workflow_configs" / "study_tiny.yaml"


def study_config() -> dict:
    return yaml.safe_load(STUDY.read_text())


def tiny_study() -> dict:
    return yaml.safe_load(STUDY_TINY.read_text())


# ----------------------------------------------------------------------------- the design


def test_the_study_compares_five_models_at_one_budget_on_one_generator():
    cfg = load_config(study_config(), SCHEMA)
    check_models(check_config(cfg))  # every model builds
    table = cfg["tables"]["study_mnist"]
    cells = list(table["rows"].values())
    info = {c: cell_info(cfg, c) for c in cells}
    assert [info[c].model for c in cells] == ["KAEM", "KAEM", "LEBM", "VAE", "DDPM"]
    assert [info[c].criterion for c in cells] == ["importance", "ula", "lebm", "elbo", "ddpm"]
    assert all(cell_seeds(cfg, c) == [0, 1, 2] for c in cells)
    assert table["min_seeds"] >= 2 and table["matched"] == "seconds" and table["real"]
    assert table["evidence"] and table["samples"]
    # One budget, and at least three points on every curve.
    assert len({cell_budget(cfg, c) for c in cells}) == 1 and cell_budget(cfg, cells[0]) > 0
    assert all(len(snapshot_times(cfg, c)) + 1 >= 3 for c in cells)
    # The budget, not the epochs, ends every run: planned epochs far beyond any budget.
    assert all(resolve_cell(cfg, c)["train"]["epochs"] >= 1000 for c in cells)
    # KAEM, the LEBM and the VAE share one generator: the nist preset's KAN.
    generators = [resolve_cell(cfg, c)["model"]["generator"] for c in cells[:4]]
    assert all(g == generators[0] for g in generators) and generators[0]["kind"] == "kan"
    # ULA-MLE on a prior with a density, the paper's 40 steps of 0.005 (Table 5).
    ula = from_dict(TrainConfig, resolve_cell(cfg, "mnist_ula")["train"])
    assert (ula.langevin.n_steps, ula.langevin.step_size) == (40, 0.005)
    assert resolve_cell(cfg, "mnist_ula")["model"]["prior"]["shared_uniforms"] is False
    # The DDPM draws by DDIM in 50 steps; the features are held to 0.98.
    assert cfg["cells"]["mnist_ddpm"]["sampler"]["scheduler"] == "ddim"
    assert cfg["cells"]["mnist_ddpm"]["sampler"]["steps"] == 50
    assert cfg["features"]["min_accuracy"] == 0.98 and cfg["device"] == "cpu"
    assert not cfg["datasets"]["mnist"]["download"]  # offline
    assert [has_evidence(info[c].model) for c in cells] == [True, True, False, True, False]


# ----------------------------------------------------------------------------- bad input


def _errors(raw: dict) -> list[str]:
    """The lines of the error that loading ``raw`` raises (it must raise)."""
    with pytest.raises(WorkflowConfigError) as err:
        load_config(raw, SCHEMA)
    return str(err.value).splitlines()[1:]


@pytest.mark.parametrize("budget", ["4m", 0, -60, True, float("inf"), float("nan")])
def test_a_budget_that_is_not_a_positive_number_is_one_error_naming_its_key(budget):
    errors = _errors(_set(tiny_study(), "common_override.train.max_seconds", budget))
    assert len(errors) == 1, errors
    assert errors[0].startswith("  - common_override: train.max_seconds: ")
    cells = ", ".join(tiny_study()["cells"])
    assert errors[0].endswith(f"(in cells {cells})")


def test_a_cells_own_bad_budget_is_named_at_the_cell():
    errors = _errors(_set(tiny_study(), "cells.tiny_vae.override.train.max_seconds", -1))
    assert errors == [
        "  - cells.tiny_vae.override: train.max_seconds: -1.0 is out of range; it must be positive"
    ]


def test_snapshots_beyond_the_budget_are_refused():
    errors = _errors(_set(tiny_study(), "common_override.train.snapshot_seconds", [1, 4, 9]))
    assert len(errors) == 1
    assert errors[0].startswith(
        "  - common_override: train.snapshot_seconds [4.0, 9.0] lie beyond the budget, "
        "train.max_seconds 3"
    )


def test_a_model_the_datasets_images_do_not_fit_is_refused_before_any_job():
    raw = tiny_study()
    raw["datasets"]["mnist"] = {"features": "classifier", "download": False}
    raw["cells"]["tiny_ddpm"]["dataset"] = "mnist"
    errors = _errors(raw)
    assert any(
        "cells.tiny_ddpm.override: model.image_shape [1, 8, 8] differs from dataset 'mnist''s "
        "[1, 28, 28]" in e
        for e in errors
    ), errors
    # A UNet whose levels do not halve 28 pixels evenly cannot be built: named before any job.
    raw = _set(study_config(), "cells.mnist_ddpm.override.model.channels", [32, 64, 128, 256])
    with pytest.raises(WorkflowConfigError, match=r"cells\.mnist_ddpm\.override: the model cannot"):
        check_models(check_config(load_config(raw, SCHEMA)))


def test_fewer_seeds_than_the_table_needs_for_a_spread_are_refused():
    errors = _errors(_set(tiny_study(), "cells.tiny_ddpm.seeds", [0]))
    assert errors == [
        "  - tables.study.min_seeds: the table shows the spread across at least 2 seeds, but "
        "rows.DDPM (tiny_ddpm) has 1 (seeds [0]); give the cell more seeds"
    ]
    # A table that asks for nothing more accepts a single seed.
    raw = _set(_set(tiny_study(), "cells.tiny_ddpm.seeds", [0]), "tables.study.min_seeds", 1)
    load_config(raw, SCHEMA)


def test_a_table_at_matched_seconds_needs_one_budget_and_a_curve_of_three_points():
    errors = _errors(_set(tiny_study(), "cells.tiny_vae.override.train.max_seconds", 4))
    assert errors == [
        "  - tables.study.matched: the rows train for different budgets (tiny_is 3 s, "
        "tiny_ula 3 s, tiny_lebm 3 s, tiny_vae 4 s, tiny_ddpm 3 s); give them one "
        "train.max_seconds (in common_override, say)"
    ]
    errors = _errors(_set(tiny_study(), "cells.tiny_vae.override.train.max_seconds", None))
    assert errors == [
        "  - tables.study.matched: rows.VAE (tiny_vae) has no train.max_seconds; every row of "
        "a table at matched seconds trains for one budget"
    ]
    errors = _errors(_set(tiny_study(), "common_override.train.snapshot_seconds", [1, 3]))
    assert len(errors) == 5 and errors[0] == (
        "  - tables.study.matched: rows.KAEM IS (tiny_is) has 2 point(s) on its curve of FID "
        "against training seconds (each train.snapshot_seconds below its budget of 3 s, then "
        "the budget); it needs at least 3"
    )
    taken = _set(tiny_study(), "tables.study_curve", {"title": "x", "rows": {"a": "tiny_is"}})
    assert _errors(taken)[0].startswith("  - tables.study_curve: the name is taken")


def test_more_held_out_images_than_the_test_split_has_are_refused():
    errors = _errors(_set(tiny_study(), "evidence.images", 500))
    assert errors == [
        "  - evidence.images: 500 held-out images for the log p(x) of table study, but the "
        "test split of 'tiny' has 100; lower it or raise datasets.tiny.n_test"
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("features.min_accuracy", 1.5, r"features\.min_accuracy: 1\.5 is greater than"),
        ("tables.study.min_seeds", 0, r"tables\.study\.min_seeds: 0 is less than the minimum"),
        ("tables.study.matched", "updates", r"tables\.study\.matched: 'updates' is not one of"),
        ("evidence.iwae_samples", 1, r"evidence\.iwae_samples: 1 is less than the minimum"),
    ],
)
def test_the_studys_own_keys_are_checked_by_the_schema(key, value, message):
    with pytest.raises(WorkflowConfigError, match=message):
        load_config(_set(tiny_study(), key, value), SCHEMA)


# ----------------------------------------------------------------------------- the pieces


def test_a_generated_set_records_the_seconds_its_draws_took(tmp_path):
    class Slow(torch.nn.Module):
        def generate(self, n, generator=None):
            time.sleep(0.02)
            return torch.rand(n, 1, 4, 4, generator=generator)

    g = torch.Generator().manual_seed(0)
    path = write_samples(Slow(), tmp_path / "s.h5", 50, generator=g, batch_size=10, progress=False)
    meta = samples_metadata(path)
    assert meta["n"] == 50 and meta["batch_size"] == 10
    assert 5 * 0.02 <= meta["generate_seconds"] < 5 * 0.02 + 2.0  # five calls, no writes


def _budgeted_run(tmp_path: Path, budget: float, snapshots: list[float]):
    cfg = {"batch_size": 16, "importance": {"n_samples": 12}, "max_steps": 100_000}
    cfg.update(max_seconds=budget, snapshot_seconds=snapshots, checkpoint_every=1000)
    model = build_model(TINY_MODEL)
    return train(model, tiny_images(), from_dict(TrainConfig, cfg), tmp_path, progress=False)


def test_a_training_summary_records_what_the_budget_reached_and_its_snapshots(tmp_path):
    result = _budgeted_run(tmp_path / "run", 0.6, [0.2, 0.4])
    summary = training_summary(result, 0.6)
    assert summary["steps"] == result.steps and summary["seconds"] == result.seconds >= 0.6
    assert summary["budget_reached"] and summary["max_seconds"] == 0.6
    assert summary["parameters"] == sum(p.numel() for p in result.model.parameters())
    assert sorted(summary["snapshots"]) == ["0.2", "0.4"]
    for t, taken in summary["snapshots"].items():
        assert float(t) <= taken["seconds"] < summary["seconds"]
        assert 1 <= taken["step"] < summary["steps"]
    # Published for the workflow: the snapshot's bytes, or an error saying the run ended first.
    write_json(summary, tmp_path / "training.json")
    source = tmp_path / "run" / snapshot_name(0.4)
    log = tmp_path / "snapshot.log"
    out = publish_snapshot(tmp_path / "training.json", source, tmp_path / "s.pt", 0.4, log)
    assert out.read_bytes() == source.read_bytes()
    taken = summary["snapshots"]["0.4"]
    assert log.read_text() == (
        f"{source} -> {out}: update {taken['step']}, {taken['seconds']:.3f} s\n"
    )
    short = {**summary, "snapshots": {"0.2": summary["snapshots"]["0.2"]}, "seconds": 0.3}
    write_json(short, tmp_path / "short.json")
    with pytest.raises(FileNotFoundError, match=r"took no snapshot at 0\.4 s .* raise train\."):
        publish_snapshot(tmp_path / "short.json", source, tmp_path / "t.pt", 0.4)
    assert not (tmp_path / "t.pt").exists()
    # A run that its steps ended before its budget says so.
    steps = train(
        build_model(TINY_MODEL),
        tiny_images(),
        from_dict(TrainConfig, {"batch_size": 16, "max_steps": 2, "max_seconds": 1000.0}),
        tmp_path / "steps",
        progress=False,
    )
    assert not training_summary(steps, 1000.0)["budget_reached"]


def _run(seed: int, fid: float, *, steps: int = 100, seconds: float = 10.0, **extra) -> dict:
    return {
        "training_seed": seed,
        "fid_inf": fid,
        "fid_se": 0.5,
        "fid_r2": 0.99,
        "kid_inf": fid / 1000,
        "kid_se": 1e-4,
        "kid_r2": 0.95,
        "kid_largest": fid / 900,
        "kid_largest_std": 1e-3,
        "steps": steps,
        "train_seconds": seconds,
        "max_seconds": 10.0,
        "budget_reached": seconds >= 10.0,
        "parameters": 1000,
        "generate_seconds": 0.5,
        "generated": 1000,
        **extra,
    }


def _evidence(mean: float, stderr: float = 0.5, estimator: str = "importance") -> dict:
    return {"estimator": estimator, "samples": 100, "mean": mean, "stderr": stderr}


def test_a_table_at_matched_seconds_gives_updates_seconds_per_update_and_generation_time():
    runs = [_run(0, 50.0, steps=100, seconds=10.0), _run(1, 60.0, steps=300, seconds=10.5)]
    assert compute_columns(runs) == pytest.approx(
        {
            "parameters": 1000,
            "updates": 200.0,
            "s/update": (0.1 + 10.5 / 300) / 2,
            "generation ms/image": 0.5,
        }
    )
    short = _run(2, 70.0, steps=50, seconds=4.0)
    df = metrics_table(
        {"A": ("a", runs), "B": ("b", [short, _run(3, 80.0)])}, compute=True
    ).set_index("model")
    assert list(df.columns[2 : 2 + len(COMPUTE_COLUMNS)]) == list(COMPUTE_COLUMNS)
    assert df.loc["A", "updates"] == 200.0 and df.loc["A", "flags"] == ""
    assert df.loc["B", "flags"] == "stopped before its budget (seed 2: 4 of 10 s)"
    assert "updates" not in metrics_table({"A": ("a", runs)}).columns  # only when asked


def test_held_out_log_likelihood_sits_beside_the_scores_or_says_there_is_no_estimator():
    kaem = [_run(0, 50.0, evidence=_evidence(-90.0)), _run(1, 60.0, evidence=_evidence(-94.0))]
    vae = [_run(0, 70.0, evidence=_evidence(-100.0, 0.2, "iwae_bound"))] * 2
    lebm = [_run(0, 80.0, evidence=None)] * 2
    assert evidence_columns(kaem) == pytest.approx(
        {"log p(x)": -92.0, "log p(x) sd": math.sqrt(8.0), "log p(x) SE": 0.5}
        | {"estimator": "IS, S = 100"}
    )
    rows = {"KAEM": ("k", kaem), "VAE": ("v", vae), "LEBM": ("l", lebm)}
    df = metrics_table(rows, real=_run(0, 1.0), evidence=True).set_index("model")
    assert list(df.columns).index("estimator") + 1 == list(df.columns).index("extractor accuracy")
    assert set(EVIDENCE_COLUMNS) <= set(df.columns)
    assert df.loc["VAE", "estimator"] == "IWAE bound, K = 100"
    assert df.loc["LEBM", "estimator"] == "no estimator" and math.isnan(df.loc["LEBM", "log p(x)"])
    assert df.loc["Real (held-out)", "estimator"] == "-"
    md = to_markdown(df.reset_index())
    assert "| -92.0 | 2.8 | 0.5 | IS, S = 100 |" in md
    note = evidence_note(
        {"images": 200, "n_samples": 10_000, "iwae_samples": 1000},
        {"l": "its prior has an intractable normaliser"},
    )
    assert "first 200 test images" in note and "S = 10000" in note and "K = 1000" in note
    assert note.endswith("l: no estimator, as its prior has an intractable normaliser.")


def test_the_extractors_bar_is_the_configured_accuracy_where_one_is_set():
    quality = {"holdout_accuracy": 0.975, "chance": 0.1, "threshold": 0.55, "n_classes": 10}
    runs = [{"extractor": "classifier", "extractor_quality": quality}]
    assert extractor_flag(runs) == ""
    assert extractor_flag(runs, 0.98) == "extractor accuracy 0.975 < 0.98 (chance 0.10)"
    assert extractor_flag(runs, 0.97) == ""
    df = metrics_table({"A": ("a", [{**_run(0, 5.0), **runs[0]}] * 2)}, min_accuracy=0.98)
    assert df["flags"].iloc[0] == "extractor accuracy 0.975 < 0.98 (chance 0.10)"
    assert "below 0.98 (features.min_accuracy) it is flagged" in seeds_note({}, None, 0.98)
    assert "below halfway from chance to perfect" in seeds_note({})
    table = extractors_table({"mnist": quality}, 0.98)
    assert table.loc[0, "bar"] == 0.98 and "0.975 < 0.98" in table.loc[0, "flags"]
    assert extractors_table({"mnist": quality}).loc[0, "bar"] == 0.55


def test_a_curve_table_gives_each_models_points_across_its_seeds():
    records = [
        {**_run(seed, fid), "point": point, "seconds": point + 0.1 * seed, "step": step}
        for point, step, fids in ((60.0, 10, (300.0, 340.0)), (120.0, 20, (200.0, 220.0)))
        for seed, fid in enumerate(fids)
    ]
    df = curve_table({"KAEM": ("k", records), "VAE": ("v", records[:2])})
    assert list(df["model"]) == ["KAEM", "KAEM", "VAE"]
    assert list(df["point s"]) == [60.0, 120.0, 60.0]
    first = df.iloc[0]
    assert first["seeds"] == 2 and first["FID_inf"] == 320.0
    assert first["FID_inf sd"] == pytest.approx(math.sqrt(800.0))
    assert first["seconds"] == pytest.approx(60.05) and first["updates"] == 10
    assert df.iloc[1]["FID_inf"] == 210.0


def test_run_and_curve_records_are_read_from_the_runs_files(tmp_path):
    def write(name: str, data: dict) -> Path:
        return write_json(data, tmp_path / name)

    scores = {k: v for k, v in _run(0, 40.0).items() if k.startswith(("fid", "kid"))}
    summary = {
        "steps": 120,
        "seconds": 10.2,
        "parameters": 77,
        "max_seconds": 10.0,
        "budget_reached": True,
        "snapshots": {"5": {"step": 70, "seconds": 5.05}},
    }
    g = torch.Generator().manual_seed(0)
    model = build_model(TINY_MODEL)
    sampler = {"scheduler": "ddim", "steps": 4}
    samples = write_samples(
        model, tmp_path / "s.h5", 20, generator=g, progress=False, attrs={"sampler": sampler}
    )
    run = run_record(
        write("m.json", scores),
        write("t.json", summary),
        samples=samples,
        evidence=write("e.json", _evidence(-3.0)),
    )
    assert (run["steps"], run["train_seconds"], run["parameters"]) == (120, 10.2, 77)
    assert run["generated"] == 20 and run["generate_batch"] == 500
    assert run["sampler"] == {"scheduler": "ddim", "steps": 4} and run["evidence"]["mean"] == -3
    assert run_record(tmp_path / "m.json", tmp_path / "t.json")["evidence"] is None
    write("bad.json", {**scores, "fid_inf": None})
    with pytest.raises(ValueError, match=r"bad\.json: scores missing or not finite"):
        run_record(tmp_path / "bad.json", tmp_path / "t.json")
    points = curve_records([run], {"5": [write("m5.json", {**scores, "fid_inf": 90.0})]})
    assert [(p["point"], p["seconds"], p["step"], p["fid_inf"]) for p in points] == [
        (5.0, 5.05, 70, 90.0),
        (10.0, 10.2, 120, 40.0),
    ]
    note = compute_note([{"name": "d", "model": "DDPM"}], [{**run, "cell": "d"}])
    assert "every row trained for 10 s" in note and "at batch 500" in note
    assert "d draws with DDIM, 4 steps" in note and "shares no generator" in note
    assert "different sizes" not in note
    runs = [{**run, "cell": "d", "sizes": [5, 10]}, {**run, "cell": "k", "sizes": [50, 100]}]
    note = compute_note([{"name": "d", "model": "DDPM"}, {"name": "k", "model": "KAEM"}], runs)
    assert "generated sets of different sizes (d: 5, 10; k: 50, 100)" in note


def test_the_curve_and_the_sample_grids_are_drawn(tmp_path):
    rows = []
    for model, fids in (("KAEM", (300.0, 200.0, 120.0)), ("VAE", (250.0, 240.0, 230.0))):
        for point, fid in zip((60.0, 120.0, 240.0), fids, strict=True):
            rows.append(
                {
                    "model": model,
                    "seconds": point + 1,
                    "FID_inf": fid,
                    "FID_inf sd": 10.0,
                    "seeds": 3,
                }
            )
    path = plot_fid_curve(pd.DataFrame(rows), tmp_path / "curve.png", real={"fid_inf": 0.5})
    assert not_blank(path) > 0.01
    with pytest.raises(ValueError, match="no points"):
        plot_fid_curve(pd.DataFrame(columns=["model"]), tmp_path / "empty.png")
    g = torch.Generator().manual_seed(0)
    grids = [torch.rand(16, 1, 8, 8, generator=g), torch.zeros(16, 1, 8, 8)]
    path = plot_sample_grids(grids, ["KAEM", "VAE"], tmp_path / "grids.png")
    assert not_blank(path) > 0.01
    with pytest.raises(ValueError, match="2 grids for 1 labels"):
        plot_sample_grids(grids, ["KAEM"], tmp_path / "bad.png")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.workflow
def test_a_dry_run_of_the_study_plans_its_trainings_curves_and_evidence(tmp_path):
    proc = snakemake(tmp_path, STUDY, "--dry-run", "--cores", "2")
    assert_ok(proc)
    out = proc.stdout + proc.stderr
    stats = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1], re.M))
    runs, points = 5 * 3, 2  # five models, three seeds; snapshots at 60 and 120 s
    assert int(stats["train"]) == int(stats["sample"]) == int(stats["metrics"]) == runs
    for rule in ("snapshot", "sample_snapshot", "features_snapshot", "metrics_snapshot"):
        assert int(stats[rule]) == runs * points, rule
    assert int(stats["evidence"]) == 3 * 3  # KAEM IS, KAEM ULA-MLE and the VAE
    assert int(stats["figure_table"]) == 2 and "benchmark" not in stats
    assert "results/tables/study_mnist_curve.csv" in out


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """The tiny study, once for the tests below (minutes on two cores)."""
    workdir = tmp_path_factory.mktemp("study")
    targets = [
        "results/tables/study.csv",
        "results/tables/study_curve.csv",
        "results/tables/extractors.csv",
        "results/figures/tables/study/fid_curve.png",
        "results/figures/tables/study/sample_grids.png",
    ]
    proc = snakemake(workdir, STUDY_TINY, "--cores", "2", *targets)
    assert_ok(proc)
    return workdir


def _summaries(workdir: Path) -> dict[tuple[str, int], dict]:
    cfg = tiny_study()
    return {
        (cell, seed): json.loads(
            (workdir / "results" / "train" / cell / f"seed{seed}" / "training.json").read_text()
        )
        for cell in cfg["cells"]
        for seed in cfg["seeds"]
    }


@pytest.mark.workflow
def test_study_every_run_trained_to_the_budget_with_its_seeds(study_run):
    table = pd.read_csv(study_run / "results" / "tables" / "study.csv")
    assert list(table["model"]) == ["KAEM IS", "KAEM ULA", "LEBM", "VAE", "DDPM", "Real (held-out)"]
    assert list(table["seeds"].iloc[:5]) == [2] * 5 and math.isnan(table["seeds"].iloc[5])
    assert table["FID_inf sd"].iloc[:5].notna().all()  # a spread across the two seeds
    budget = 3.0
    for (cell, seed), summary in _summaries(study_run).items():
        # Matched seconds: each run stopped after the first update that reached the budget.
        log = pd.read_csv(study_run / "results" / "train" / cell / f"seed{seed}" / "log.csv")
        assert summary["budget_reached"] and summary["max_seconds"] == budget
        assert summary["seconds"] >= budget, (cell, seed)
        assert summary["seconds"] - log["seconds"].iloc[-1] < budget, (cell, seed)
        assert summary["steps"] == log["step"].iloc[-1] == len(log)
        config = yaml.safe_load(
            (study_run / "results" / "train" / cell / f"seed{seed}" / "config.yaml").read_text()
        )
        assert config["train"]["seed"] == seed
    # The updates and seconds per update of each row are its seeds' means.
    rows = table.set_index("cell")
    for cell in tiny_study()["cells"]:
        runs = [s for (c, _), s in _summaries(study_run).items() if c == cell]
        assert rows.loc[cell, "updates"] == pytest.approx(np.mean([r["steps"] for r in runs]))
        per_update = np.mean([r["seconds"] / r["steps"] for r in runs])
        assert rows.loc[cell, "s/update"] == pytest.approx(per_update)
        assert rows.loc[cell, "train seconds"] >= budget
        assert rows.loc[cell, "generation ms/image"] > 0
        assert "stopped before" not in str(rows.loc[cell, "flags"])
    # Two seeds are two trainings.
    assert rows.loc["tiny_is", "FID_inf sd"] > 0


@pytest.mark.workflow
def test_study_each_cell_has_three_curve_points_from_its_snapshots(study_run):
    curve = pd.read_csv(study_run / "results" / "tables" / "study_curve.csv")
    for cell in tiny_study()["cells"]:
        points = curve[curve["cell"] == cell]
        assert list(points["point s"]) == [1.0, 2.0, 3.0], cell
        assert (points["seeds"] == 2).all() and points["FID_inf"].notna().all()
        # Where the snapshots were taken: at or just past each point, in increasing updates.
        assert (points["seconds"].to_numpy() >= points["point s"].to_numpy()).all()
        assert (np.diff(points["updates"].to_numpy()) > 0).all()
    samples = study_run / "results" / "samples" / "tiny_vae" / "seed1"
    assert sorted(p.name for p in samples.iterdir()) == ["at1s.h5", "at2s.h5"]
    # A snapshot's generated set is its model's: its first batch drawn again is the same.
    from kaem.kinds import load_model

    snapshot = study_run / "results" / "train" / "tiny_vae" / "seed1" / "snapshot-2s.pt"
    batch = tiny_study()["sampling"]["batch_size"]
    again = load_model(snapshot).generate(batch, torch.Generator().manual_seed(1 + 1))
    stored = read_samples(samples / "at2s.h5", 0, batch)
    assert np.array_equal(stored, (again * 255).round().to(torch.uint8).numpy())
    figure = study_run / "results" / "figures" / "tables" / "study"
    assert not_blank(figure / "fid_curve.png") > 0.01
    assert not_blank(figure / "sample_grids.png") > 0.01


@pytest.mark.workflow
def test_study_flags_its_extractor_and_gives_the_real_row_and_the_evidence(study_run):
    tables = study_run / "results" / "tables"
    table = pd.read_csv(tables / "study.csv").set_index("model")
    accuracy = pd.read_csv(tables / "extractors.csv")["holdout accuracy"].iloc[0]
    assert accuracy < 0.98  # the tiny classifier cannot reach the study's bar
    flag = f"extractor accuracy {accuracy:.3f} < 0.98"
    assert all(flag in f for f in table["flags"]), table["flags"]
    md = (tables / "study.md").read_text()
    assert "below 0.98 (features.min_accuracy) it is flagged" in md
    assert "every row trained for 3 s" in md and "tiny_ddpm draws with DDIM, 4 steps" in md
    real = table.loc["Real (held-out)"]
    assert real["FID_inf"] < table["FID_inf"].iloc[:5].min() and real["estimator"] == "-"
    for model in ("KAEM IS", "KAEM ULA", "VAE"):
        assert np.isfinite(table.loc[model, ["log p(x)", "log p(x) SE"]].to_numpy(float)).all()
    assert table.loc["VAE", "estimator"] == "IWAE bound, K = 20"
    assert table.loc["KAEM IS", "estimator"] == "IS, S = 200"
    for model in ("LEBM", "DDPM"):
        assert table.loc[model, "estimator"] == "no estimator"
    assert "tiny_lebm: no estimator, as its prior has an intractable normaliser" in md
    assert "first 50 test images" in md


@pytest.mark.workflow
def test_a_bad_budget_stops_the_study_before_any_job(tmp_path):
    bad = copy.deepcopy(tiny_study())
    bad["common_override"]["train"]["max_seconds"] = "3 minutes"
    config = write_config(tmp_path / "bad.yaml", bad)
    proc = snakemake(tmp_path, config, "--cores", "1")
    assert proc.returncode != 0
    assert "common_override: train.max_seconds: expected a number, got '3 minutes'" in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
