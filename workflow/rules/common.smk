# Configuration checks, cells, file names and input functions shared by the rules.
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.io import report as report_item

# The driver imports kaem from this repository, the same code the jobs run (their scripts
# put the repository first on sys.path for the same reason).
sys.path.insert(0, str(workflow.basedir))

from kaem.workflow.config import (
    WorkflowConfigError,
    cell_info,
    cell_sizes,
    check_models,
    load_config,
    load_schema,
    resolve_cell,
    run_key,
)

SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"

# Validate before any job is planned; defaults of the schema are filled into `config`. The
# main process also builds every model once (about 0.1 s each), which the jobs, already
# checked, skip.
try:
    _filled = load_config(config, load_schema(SCHEMA))
    if workflow.is_main_process:
        check_models(_filled)
except WorkflowConfigError as err:
    raise WorkflowError(str(err)) from None
config.clear()
config.update(_filled)

DATASETS = list(config["datasets"])
CELLS = list(config["cells"])
INFO = {cell: cell_info(config, cell) for cell in CELLS}
COLOUR = {"svhn", "celeba"}  # the datasets whose cells train on a GPU (Table 5)
CLASSIFIER_DATASETS = [d for d in DATASETS if config["datasets"][d]["features"] == "classifier"]
BENCHMARK = config["benchmark"]["enabled"]


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),
    cell="|".join(re.escape(c) for c in CELLS),


# ----------------------------------------------------------------------------- file names


def data_file(dataset):
    return f"results/data/{dataset}.h5"


def model_file(cell):
    return f"results/train/{cell}/model.pt"


def train_log_file(cell):
    return f"results/train/{cell}/log.csv"


def train_config_file(cell):
    return f"results/train/{cell}/config.yaml"


def samples_file(cell):
    return f"results/samples/{cell}.h5"


def classifier_file(dataset):
    return f"results/features/{dataset}/classifier.pt"


def classifier_summary_file(dataset):
    return f"results/features/{dataset}/classifier.json"


def real_features_file(dataset):
    return f"results/features/{dataset}/real.npz"


def generated_features_file(cell):
    return f"results/features/cells/{cell}.npz"


def metrics_file(cell):
    return f"results/metrics/{cell}.json"


BENCHMARK_FILE = "results/benchmark/benchmark.json"


# ----------------------------------------------------------------------------- input functions


def dataset_settings(wildcards):
    return dict(config["datasets"][wildcards.dataset])


def source_input(wildcards):
    """A user-given source file is an input, so Snakemake checks it exists before the job."""
    source = config["datasets"][wildcards.dataset]["source"]
    return [source] if source else []


def cell_dataset(cell):
    return config["cells"][cell]["dataset"]


def cell_data(wildcards):
    return data_file(cell_dataset(wildcards.cell))


def cell_settings(wildcards):
    """The resolved {model, train} settings: a parameter, so changing them retrains."""
    return resolve_cell(config, wildcards.cell)


def cell_workdir(wildcards):
    """Checkpoints live outside the job's outputs, which Snakemake deletes before a rerun;
    the folder is named by the settings, so only a run with the same settings resumes."""
    key = run_key(resolve_cell(config, wildcards.cell))
    return f"results/train/{wildcards.cell}/work-{key}"


def cell_gpu(wildcards):
    return 1 if cell_dataset(wildcards.cell) in COLOUR else 0


def sample_count(wildcards):
    """The largest regression size: every subset is drawn from this one generated set."""
    return max(cell_sizes(config, wildcards.cell))


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
    return {"samples": samples_file(wildcards.cell), **extractor_inputs(dataset)}


def dataset_extractor(wildcards):
    return extractor_kind(wildcards.dataset)


def cell_extractor(wildcards):
    return extractor_kind(cell_dataset(wildcards.cell))


def cell_real_features(wildcards):
    return real_features_file(cell_dataset(wildcards.cell))


def cell_sizes_param(wildcards):
    return cell_sizes(config, wildcards.cell)


# ----------------------------------------------------------------------------- figures


def _figure(kind, path, cell=None, **inputs):
    return {"kind": kind, "path": path, "cell": cell, **inputs}


def figure_plan():
    """Every figure: its kind, file and the inputs it is drawn from."""
    plan = []
    for cell, info in INFO.items():
        out = f"results/figures/{cell}"
        plan.append(_figure("samples", f"{out}/samples.png", cell, samples=samples_file(cell)))
        plan.append(
            _figure("training_curve", f"{out}/training_curve.png", cell, log=train_log_file(cell))
        )
        plan.append(
            _figure("extrapolation", f"{out}/extrapolation.png", cell, metrics=metrics_file(cell))
        )
        if info.model == "KAEM":
            for kind in ("prior_grid", "prior_top"):
                plan.append(_figure(kind, f"{out}/{kind}.png", cell, model=model_file(cell)))
        if info.criterion == "thermodynamic":
            plan.append(
                _figure(
                    "schedule",
                    f"{out}/temperature_schedule.png",
                    cell,
                    config=train_config_file(cell),
                    log=train_log_file(cell),
                )
            )
    if BENCHMARK:
        plan.append(_figure("benchmark", "results/figures/benchmark.png", bench=BENCHMARK_FILE))
    return plan


FIGURES = figure_plan()

_FIGURE_CAPTIONS = {
    "samples": "samples.rst",
    "training_curve": "training_curve.rst",
    "extrapolation": "extrapolation.rst",
    "prior_grid": "prior_grid.rst",
    "prior_top": "prior_top.rst",
    "schedule": "schedule.rst",
    "benchmark": "benchmark.rst",
}


def figure_inputs(wildcards):
    keys = ("samples", "log", "metrics", "model", "config", "bench")
    return sorted({fig[k] for fig in FIGURES for k in keys if k in fig})


def figure_outputs():
    """The figures as report items: one category, a subcategory per cell, labelled."""
    return [
        report_item(
            fig["path"],
            caption=f"../report/{_FIGURE_CAPTIONS[fig['kind']]}",
            category="Figures",
            subcategory=fig["cell"] or "Benchmarks",
            labels={"cell": fig["cell"] or "-", "figure": fig["kind"]},
        )
        for fig in FIGURES
    ]


# ----------------------------------------------------------------------------- tables


def table_plan():
    """Every table: name, title and how it is made; each is written as CSV, MD and TeX."""
    plan = []
    for name, spec in config["tables"].items():
        plan.append(
            {
                "name": name,
                "kind": "metrics",
                "title": spec["title"],
                "paper": spec["paper"],
                "rows": dict(spec["rows"]),
            }
        )
    plan.append({"name": "cells", "kind": "cells", "title": "Every cell and its scores"})
    if CLASSIFIER_DATASETS:
        plan.append(
            {
                "name": "extractors",
                "kind": "extractors",
                "title": "Feature classifiers: accuracy on held-out and test images",
            }
        )
    if BENCHMARK:
        plan.append(
            {
                "name": "benchmark",
                "kind": "benchmark",
                "title": "App. A: training-step and sampling time and peak memory",
            }
        )
    return plan


TABLES = table_plan()


def table_inputs(wildcards):
    inputs = {
        "metrics": [metrics_file(c) for c in CELLS],
        "logs": [train_log_file(c) for c in CELLS],
        "classifiers": [classifier_summary_file(d) for d in CLASSIFIER_DATASETS],
    }
    if BENCHMARK:
        inputs["bench"] = BENCHMARK_FILE
    return inputs


def table_outputs():
    """CSV files go into the report (rendered as tables); Markdown and LaTeX sit beside."""
    out = []
    for table in TABLES:
        stem = f"results/tables/{table['name']}"
        out.append(
            report_item(
                f"{stem}.csv",
                caption=f"../report/table_{table['kind']}.rst",
                category="Tables",
                labels={"table": table["name"], "title": table["title"]},
            )
        )
        out += [f"{stem}.md", f"{stem}.tex"]
    return out


def cell_records():
    """What each cell is, for the tables (plain values, a rule parameter)."""
    return [dict(info._asdict()) for info in INFO.values()]


# ----------------------------------------------------------------------------- targets


def all_targets():
    return [fig["path"] for fig in FIGURES] + [
        f"results/tables/{t['name']}.{ext}" for t in TABLES for ext in ("csv", "md", "tex")
    ]
