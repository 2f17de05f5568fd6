# Configuration checks, cells, file names and input functions shared by the rules.
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The driver imports kaem from this repository, the same code the jobs run (their scripts
# put the repository first on sys.path for the same reason).
sys.path.insert(0, str(REPO))

from kaem.pipeline.config import (
    CURVE_SUFFIX,
    benchmark_sweeps,
    check_config,
    check_models,
    has_evidence,
    load_schema,
    read_config,
    run_key,
    validate_config,
)
from kaem.config import ConfigError
from kaem.pipeline.artifacts import publish_snapshot
from kaem.training import snapshot_name

SCHEMA = Path(workflow.basedir) / "schemas" / "config.schema.yaml"


def config_overrides():
    """The `--config KEY=VALUE` values as written (Snakemake reads a nested VALUE's numbers
    as strings), falling back to Snakemake's own reading of a key it got otherwise."""
    raw = dict(
        arg.split("=", 1)
        for arg in workflow.config_settings.config_args or ()
        if isinstance(arg, str) and "=" in arg
    )
    given = workflow.config_settings.config
    return {key: raw.get(key, value) for key, value in given.items()}


# The config files are read again as written (YAML 1.2 numbers, no duplicate keys or cells),
# then validated before any job is planned; defaults of the schema are filled into `config`.
# Each cell is then validated once into its typed form (kaem.pipeline.cells.Cell), which
# every rule below reads. The main process also builds every model once (about 0.1 s each),
# which the jobs, already checked, skip.
try:
    _filled = validate_config(
        read_config(workflow.configfiles, config_overrides()), load_schema(SCHEMA)
    )
    CELL = check_config(_filled)
    if workflow.is_main_process:
        check_models(CELL)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_filled)

DATASETS = list(config["datasets"])
CELLS = list(config["cells"])
INFO = {cell: CELL[cell].info for cell in CELLS}
#: Each cell's training seeds: one training job (and generated set, features, metrics) each.
SEEDS = {cell: list(INFO[cell].seeds) for cell in CELLS}
CLASSIFIER_DATASETS = [d for d in DATASETS if config["datasets"][d]["features"] == "classifier"]
BENCHMARK = config["benchmark"]["enabled"]
#: App. A's cost curves: one job, figure and table each.
SWEEPS = benchmark_sweeps(config)

#: Each cell's snapshot times below its budget, as its snapshot files name them (``60``,
#: ``7.5``): the points of its FID-against-seconds curve before the final model.
SNAPSHOTS = {cell: [f"{t:g}" for t in CELL[cell].snapshots] for cell in CELLS}

#: Figures of a cell: ``results/figures/{cell}/{figure}.png``, each drawn by its own job.
CELL_FIGURES = (
    "samples",
    "training_curve",
    "extrapolation",
    "prior_grid",
    "prior_top",
    "temperature_schedule",
)


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),
    cell="|".join(re.escape(c) for c in CELLS),
    seed=r"\d+",
    figure="|".join(CELL_FIGURES),
    sweep="|".join(re.escape(s) for s in SWEEPS) or "(?!)",
    t=r"[0-9][0-9.e+-]*",


# ----------------------------------------------------------------------------- file names


def data_file(dataset):
    return f"results/data/{dataset}.h5"


# A cell's files are per seed: results/<stage>/<cell>/seed<seed>...


def run_dir(cell, seed):
    return f"results/train/{cell}/seed{seed}"


def model_file(cell, seed):
    return f"{run_dir(cell, seed)}/model.pt"


def train_log_file(cell, seed):
    return f"{run_dir(cell, seed)}/log.csv"


def train_config_file(cell, seed):
    return f"{run_dir(cell, seed)}/config.yaml"


def train_summary_file(cell, seed):
    """Updates, training seconds, parameters and snapshots of one training."""
    return f"{run_dir(cell, seed)}/training.json"


# A snapshot of a training at t seconds (below its budget) is a point of the cell's curve:
# published from the work folder, then sampled, featured and scored like the final model.


def snapshot_file(cell, seed, t):
    return f"{run_dir(cell, seed)}/snapshot-{t}s.pt"


def snapshot_samples_file(cell, seed, t):
    return f"results/samples/{cell}/seed{seed}/at{t}s.h5"


def snapshot_features_file(cell, seed, t):
    return f"results/features/cells/{cell}/seed{seed}/at{t}s.npz"


def snapshot_metrics_file(cell, seed, t):
    return f"results/metrics/{cell}/seed{seed}/at{t}s.json"


def evidence_file(cell, seed):
    return f"results/evidence/{cell}/seed{seed}.json"


def samples_file(cell, seed):
    return f"results/samples/{cell}/seed{seed}.h5"


def classifier_file(dataset):
    return f"results/features/{dataset}/classifier.pt"


def classifier_summary_file(dataset):
    return f"results/features/{dataset}/classifier.json"


def real_features_file(dataset):
    return f"results/features/{dataset}/real.npz"


def real_holdout_features_file(dataset):
    """Features of real training images the reference set leaves out (a real-vs-real row)."""
    return f"results/features/{dataset}/real_holdout.npz"


def generated_features_file(cell, seed):
    return f"results/features/cells/{cell}/seed{seed}.npz"


def metrics_file(cell, seed):
    return f"results/metrics/{cell}/seed{seed}.json"


def real_metrics_file(dataset):
    return f"results/metrics/real/{dataset}.json"


BENCHMARK_FILE = "results/benchmark/benchmark.json"


def sweep_file(sweep):
    return f"results/benchmark/sweeps/{sweep}.json"


def sweep_figure_file(sweep):
    return f"results/figures/benchmark/{sweep}.png"


def sweep_values(wildcards):
    """The sweep's configured values, or None for its own."""
    return config["benchmark"]["sweeps"]["values"].get(wildcards.sweep)


# ----------------------------------------------------------------------------- input functions


def dataset_settings(wildcards):
    return dict(config["datasets"][wildcards.dataset])


def source_input(wildcards):
    """A user-given source file is an input, so Snakemake checks it exists before the job."""
    source = config["datasets"][wildcards.dataset]["source"]
    return [source] if source else []


def cell_dataset(cell):
    return CELL[cell].dataset


def cell_data(wildcards):
    return data_file(cell_dataset(wildcards.cell))


def cell_settings(wildcards):
    """The resolved {model, train} settings of one seed: a parameter, so changing them
    retrains."""
    return CELL[wildcards.cell].settings(int(wildcards.seed))


def cell_workdir(wildcards):
    """Checkpoints live outside the job's outputs, which Snakemake deletes before a rerun;
    the folder is named by the settings and the dataset's, so only a run with the same
    settings on the same data resumes."""
    key = run_key(cell_settings(wildcards), config["datasets"][cell_dataset(wildcards.cell)])
    return f"{run_dir(wildcards.cell, wildcards.seed)}/work-{key}"


def snapshot_source(wildcards):
    """The snapshot in the training's work folder (written by kaem.train)."""
    return f"{cell_workdir(wildcards)}/{snapshot_name(float(wildcards.t))}"


def sampling_seed(wildcards):
    """Each training seed draws its generated set with its own seed."""
    return config["sampling"]["seed"] + int(wildcards.seed)


def cell_gpu(wildcards):
    """One GPU for the cells of a dataset configured with ``gpu: true``."""
    return int(config["datasets"][cell_dataset(wildcards.cell)]["gpu"])


def cell_sampler_param(wildcards):
    """A DDPM cell's scheduler, steps and eta for its generated set (empty: the default)."""
    return dict(CELL[wildcards.cell].sampler)


def sample_count(wildcards):
    """The largest regression size: every subset is drawn from this one generated set."""
    return max(CELL[wildcards.cell].sizes)


def extractor_kind(dataset):
    return config["datasets"][dataset]["features"]


def extractor_inputs(dataset):
    if extractor_kind(dataset) == "classifier":
        return {"classifier": classifier_file(dataset)}
    return {}


def real_features_inputs(wildcards):
    return {"data": data_file(wildcards.dataset), **extractor_inputs(wildcards.dataset)}


def generated_features_inputs(wildcards):
    dataset = cell_dataset(wildcards.cell)
    return {"samples": samples_file(wildcards.cell, wildcards.seed), **extractor_inputs(dataset)}


def snapshot_features_inputs(wildcards):
    dataset = cell_dataset(wildcards.cell)
    samples = snapshot_samples_file(wildcards.cell, wildcards.seed, wildcards.t)
    return {"samples": samples, **extractor_inputs(dataset)}


def dataset_extractor(wildcards):
    return extractor_kind(wildcards.dataset)


def cell_extractor(wildcards):
    return extractor_kind(cell_dataset(wildcards.cell))


def cell_real_features(wildcards):
    return real_features_file(cell_dataset(wildcards.cell))


def cell_sizes_param(wildcards):
    return list(CELL[wildcards.cell].sizes)


def real_holdout_range(wildcards):
    """The held-out real images: after the reference ones, as many as the largest size."""
    start = config["metrics"]["real_images"]
    return {"start": start, "max_images": max(config["metrics"]["sizes"])}


# ----------------------------------------------------------------------------- figures

def figure_file(cell, figure):
    return f"results/figures/{cell}/{figure}.png"


BENCHMARK_FIGURE = "results/figures/benchmark.png"


def cell_figures(cell):
    """The figures a cell has: priors for a KAEM, the schedule for the thermodynamic one."""
    info = INFO[cell]
    names = ["samples", "training_curve", "extrapolation"]
    if info.model == "KAEM":
        names += ["prior_grid", "prior_top"]
    if info.criterion == "thermodynamic":
        names.append("temperature_schedule")
    return names


def figure_inputs(wildcards):
    """What one figure is drawn from: only its own cell's files, of its first seed (the
    regressions: of every seed)."""
    cell, figure = wildcards.cell, wildcards.figure
    if figure not in cell_figures(cell):
        raise WorkflowError(f"cell {cell} has no figure {figure!r}")
    seed = SEEDS[cell][0]
    if figure == "samples":
        return {"samples": samples_file(cell, seed)}
    if figure == "training_curve":
        return {"log": train_log_file(cell, seed)}
    if figure == "extrapolation":
        return {"metrics": [metrics_file(cell, s) for s in SEEDS[cell]]}
    if figure == "temperature_schedule":
        return {"config": train_config_file(cell, seed), "log": train_log_file(cell, seed)}
    return {"model": model_file(cell, seed)}


# ----------------------------------------------------------------------------- tables


def table_dataset(spec):
    """The one dataset of a table's cells (a real-vs-real row needs it)."""
    return cell_dataset(next(iter(spec["rows"].values())))


def table_plan():
    """Every table by name: title and kind; each is written as CSV, MD and TeX. A table at
    matched seconds brings a second one, its FID-against-seconds curve."""
    plan = {}
    for name, spec in config["tables"].items():
        common = {
            "title": spec["title"],
            "rows": dict(spec["rows"]),
            "real": table_dataset(spec) if spec["real"] else None,
            "min_accuracy": config["features"]["min_accuracy"],
        }
        plan[name] = {
            "kind": "metrics",
            "paper": spec["paper"],
            "matched": spec["matched"],
            "evidence": spec["evidence"],
            "evidence_settings": config["evidence"] if spec["evidence"] else None,
            "figures": table_figures(spec),
            **common,
        }
        if spec["matched"] == "seconds":
            plan[f"{name}{CURVE_SUFFIX}"] = {
                "kind": "curve",
                **common,
                "title": f"{spec['title']}: FID_inf against training seconds",
            }
    plan["cells"] = {"kind": "cells", "title": "Every cell and its scores"}
    if CLASSIFIER_DATASETS:
        plan["extractors"] = {
            "kind": "extractors",
            "title": "Feature classifiers: accuracy on held-out and test images",
            "min_accuracy": config["features"]["min_accuracy"],
        }
    if BENCHMARK:
        plan["benchmark"] = {
            "kind": "benchmark",
            "title": "App. A: training-step and sampling time and peak memory",
        }
    from kaem.bench.sweeps import SWEEPS as SWEEP_SPECS

    for sweep in SWEEPS:
        plan[f"sweep_{sweep}"] = {
            "kind": "sweep",
            "sweep": sweep,
            "title": f"App. A: {SWEEP_SPECS[sweep].title}",
        }
    return plan


def table_figures(spec):
    """A table's own figures: its FID-against-seconds curve (matched seconds), its rows'
    sample grids side by side (samples)."""
    return (["fid_curve"] if spec["matched"] == "seconds" else []) + (
        ["sample_grids"] if spec["samples"] else []
    )


TABLES = table_plan()


wildcard_constraints:
    table="|".join(re.escape(t) for t in TABLES),
    plot="fid_curve|sample_grids",


def table_cells(name):
    """The cells a table reads: a metrics or curve table its rows' cells, the cells table all."""
    table = TABLES[name]
    if table["kind"] in ("metrics", "curve"):
        return list(dict.fromkeys(table["rows"].values()))
    return CELLS if table["kind"] == "cells" else []


def seed_files(cells, file):
    """``file(cell, seed)`` of every seed of every cell in ``cells``, by cell."""
    return {c: [file(c, s) for s in SEEDS[c]] for c in cells}


def flat(files_by_cell):
    return [f for fs in files_by_cell.values() for f in fs]


def evidence_files(name):
    """Per cell of a table with evidence, its seeds' log p(x) files (None for a kind
    without an estimator)."""
    if not TABLES[name].get("evidence"):
        return {}
    return {
        c: [evidence_file(c, s) for s in SEEDS[c]] if has_evidence(INFO[c].model) else None
        for c in table_cells(name)
    }


def curve_files(name):
    """Per cell of a curve table, per snapshot time below its budget, its seeds' metrics."""
    if TABLES[name]["kind"] != "curve":
        return {}
    return {
        c: {t: [snapshot_metrics_file(c, s, t) for s in SEEDS[c]] for t in SNAPSHOTS[c]}
        for c in table_cells(name)
    }


def generated_files(name):
    """Per cell of a table at matched seconds, its seeds' generated sets (generation time)."""
    if TABLES[name].get("matched") != "seconds":
        return {}
    return seed_files(table_cells(name), samples_file)


def table_inputs(wildcards):
    name = wildcards.table
    table, cells = TABLES[name], table_cells(name)
    inputs = {
        "metrics": flat(seed_files(cells, metrics_file)),
        "summaries": flat(seed_files(cells, train_summary_file)),
        "samples": flat(generated_files(name)),
        "evidence": flat({c: fs for c, fs in evidence_files(name).items() if fs}),
        "curve": [f for ts in curve_files(name).values() for fs in ts.values() for f in fs],
    }
    if table.get("real"):
        inputs["real"] = real_metrics_file(table["real"])
    if table["kind"] == "extractors":
        inputs["classifiers"] = [classifier_summary_file(d) for d in CLASSIFIER_DATASETS]
    if table["kind"] == "benchmark":
        inputs["bench"] = BENCHMARK_FILE
    if table["kind"] == "sweep":
        inputs["bench"] = sweep_file(table["sweep"])
    return inputs


def table_params(wildcards):
    """The table's spec with its cells' records and the files by cell or dataset."""
    name = wildcards.table
    cells = table_cells(name)
    return {
        "name": name,
        **TABLES[name],
        "cells": [dict(INFO[c]._asdict()) for c in cells],
        "metrics": seed_files(cells, metrics_file),
        "summaries": seed_files(cells, train_summary_file),
        "sample_files": generated_files(name),
        "evidence_files": evidence_files(name),
        "curve_files": curve_files(name),
        "real_metrics": real_metrics_file(TABLES[name]["real"])
        if TABLES[name].get("real")
        else None,
        "classifiers": {d: classifier_summary_file(d) for d in CLASSIFIER_DATASETS},
    }


def table_labels(wildcards):
    return {"table": wildcards.table, "title": TABLES[wildcards.table]["title"]}


def table_figure_file(table, plot):
    return f"results/figures/tables/{table}/{plot}.png"


def table_figure_inputs(wildcards):
    """The curve from its table (and the real-vs-real level), the grids from the final
    generated set of each row's first seed."""
    table = TABLES[wildcards.table]
    if wildcards.plot not in table.get("figures", ()):
        raise WorkflowError(f"table {wildcards.table} has no figure {wildcards.plot!r}")
    if wildcards.plot == "fid_curve":
        inputs = {"curve": f"results/tables/{wildcards.table}{CURVE_SUFFIX}.csv"}
        if table["real"]:
            inputs["real"] = real_metrics_file(table["real"])
        return inputs
    return {"samples": [samples_file(c, SEEDS[c][0]) for c in table["rows"].values()]}


def table_figure_labels(wildcards):
    return list(TABLES[wildcards.table]["rows"])


# ----------------------------------------------------------------------------- targets


def all_targets():
    figures = [figure_file(c, f) for c in CELLS for f in cell_figures(c)]
    figures += [table_figure_file(t, p) for t, spec in TABLES.items() for p in spec.get("figures", ())]
    tables = [f"results/tables/{t}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")]
    sweeps = [sweep_figure_file(s) for s in SWEEPS]
    return figures + ([BENCHMARK_FIGURE] if BENCHMARK else []) + sweeps + tables
