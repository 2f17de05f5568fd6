"""The workflow's configuration: schema validation with defaults, and cells built from presets.

The Snakemake workflow (``Snakefile``, ``workflow/``) reads one YAML file describing datasets,
training *cells* and evaluation settings. :func:`read_config` reads it as the user wrote it
(YAML 1.2 numbers such as ``1e-3``; a key or cell name given twice is an error naming both
lines), and :func:`load_config` checks it in two passes before any job runs:

1. the JSON schema (``workflow/schemas/config.schema.yaml``): names, types and ranges, with
   the schema's defaults filled in;
2. :func:`check_config`: what a schema cannot say, such as a cell naming a dataset that is
   not configured, an override key that :mod:`kaem.config` does not know, or a model whose
   image shape differs from its dataset's.

Every error names the offending key (``cells.mnist_is.override: ...``) and all errors are
reported at once. :func:`check_config` returns every cell in its typed form
(:class:`kaem.pipeline.cells.Cell`: its preset with ``common_override`` and its own
``override`` merged in, read once), which the workflow reads from then on.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from kaem.config import (
    ConfigError,
    TrainConfig,
    load_yaml,
    parse_yaml,
)
from kaem.data import DATASETS
from kaem.kinds import kind_of
from kaem.pipeline.cells import (
    Cell,
    CellInfo,
    cell,
    cell_budget,
    cell_info,
    cell_sampler,
    cell_seeds,
    cell_sizes,
    configured_seeds,
    has_evidence,
    resolve_cell,
    run_key,
    snapshot_times,
)
from kaem.presets import PRESETS, merge
from kaem.training import resolve_device

__all__ = [
    "CURVE_MIN_POINTS",
    "CURVE_SUFFIX",
    "RESERVED_TABLES",
    "Cell",
    "CellInfo",
    "WorkflowConfigError",
    "benchmark_sweeps",
    "build_cell_model",
    "cell",
    "cell_budget",
    "cell_info",
    "cell_sampler",
    "cell_seeds",
    "cell_sizes",
    "check_config",
    "check_models",
    "has_evidence",
    "job_context",
    "load_config",
    "load_schema",
    "read_config",
    "real_row_errors",
    "resolve_cell",
    "resolve_device",
    "run_key",
    "snapshot_times",
    "validate_config",
    "write_yaml",
]

#: Table names the workflow writes itself, so configured tables may not use them.
RESERVED_TABLES = ("benchmark", "cells", "extractors")

#: A table at matched seconds has a second table, its FID-against-seconds curve, named after
#: it with this suffix.
CURVE_SUFFIX = "_curve"

#: Points a curve of FID against training seconds needs (snapshots below the budget, and the
#: budget itself): with two, nobody can tell whether a ranking still moves at the end.
CURVE_MIN_POINTS = 3


class WorkflowConfigError(ConfigError):
    """The workflow configuration is invalid; the message lists every fault with its key."""


# ----------------------------------------------------------------------------- reading


def read_config(
    files: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The workflow configuration as the user wrote it: ``files``, then ``--config`` values.

    Snakemake reads config files with PyYAML's YAML 1.1, where ``1e-3`` is a string and the
    second of two equal keys silently wins; the workflow reads the same files again here with
    :func:`kaem.config.load_yaml`. Mappings merge as Snakemake merges them.

    Parameters
    ----------
    files
        The config files, in the order Snakemake read them (``workflow.configfiles``).
    overrides
        ``--config`` values by key: the text after ``KEY=`` (read as YAML here), or a value
        Snakemake has already parsed.

    Raises
    ------
    ConfigError
        Naming the file and line(s) of invalid YAML or a duplicate key.
    """
    config: dict[str, Any] = {}
    for path in files:
        data = load_yaml(path)
        if data is None:
            continue
        if not isinstance(data, Mapping):
            raise WorkflowConfigError(f"{path}: expected a mapping of settings, got {data!r}")
        config = merge(config, data)
    for key, value in (overrides or {}).items():
        parsed = parse_yaml(value, f"--config {key}") if isinstance(value, str) else value
        config = merge(config, {key: parsed})
    return config


# ----------------------------------------------------------------------------- schema


def load_schema(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON schema written in YAML."""
    schema = load_yaml(path)
    if not isinstance(schema, dict):
        raise ValueError(f"{path} does not hold a JSON schema (a mapping)")
    return schema


def _validator_with_defaults(schema: Mapping[str, Any]) -> Any:
    """A draft 2020-12 validator that also fills in each property's ``default``.

    Defaults are set before the properties are validated, so a default mapping (``{}``) is
    itself filled from its own properties' defaults as validation descends into it.
    """
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    cls = validators.extend(Draft202012Validator, {"properties": properties_with_defaults})
    Draft202012Validator.check_schema(schema)
    return cls(schema)


def _where(path: Any) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "config"


def validate_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``config`` against ``schema`` and return a copy with the defaults filled in.

    Parameters
    ----------
    config
        The parsed configuration file.
    schema
        The JSON schema (:func:`load_schema`).

    Raises
    ------
    WorkflowConfigError
        Listing every violation as ``key.path: message``.
    """
    if not isinstance(config, Mapping):
        raise WorkflowConfigError(f"config: expected a mapping, got {type(config).__name__}")
    filled = copy.deepcopy(dict(config))
    validator = _validator_with_defaults(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: [str(p) for p in e.path])
    if errors:
        lines = [f"{_where(e.path)}: {e.message}" for e in errors]
        raise WorkflowConfigError(
            "invalid workflow configuration:\n" + "\n".join(f"  - {x}" for x in lines)
        )
    return filled


# ----------------------------------------------------------------------------- checks

#: The setting a message of :func:`kaem.config.from_dict` names first (``train.max_seconds``).
_SETTING = re.compile(r"\b((?:model|train)(?:\.[A-Za-z_]\w*)+)")


def _sets(mapping: Mapping[str, Any], dotted: str) -> bool:
    """Whether the nested ``mapping`` gives a value for the ``dotted`` key."""
    node: Any = mapping
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _origin(config: Mapping[str, Any], name: str, text: str) -> str:
    """Where the first setting ``text`` names was written for cell ``name``: its own override,
    or ``common_override`` when only that sets it (then every cell it reaches has the fault,
    and one error says so)."""
    match = _SETTING.search(text)
    if match:
        key = match.group(1)
        own = config["cells"][name].get("override") or {}
        if not _sets(own, key) and _sets(config.get("common_override") or {}, key):
            return "common_override"
    return f"cells.{name}.override"


def _budget_errors(config: Mapping[str, Any], name: str, train: TrainConfig) -> Iterator[str]:
    """A budget that is not a finite number of seconds, and snapshots it would never reach."""
    budget = train.max_seconds
    if budget is None:
        return
    if not math.isfinite(budget):
        where = _origin(config, name, "train.max_seconds")
        yield (
            f"{where}: train.max_seconds: {budget!r} is not a number of seconds; give a positive "
            "number, or leave it out for a run limited by its steps alone"
        )
        return
    late = sorted(t for t in train.snapshot_seconds if t > budget)
    if late:
        where = _origin(config, name, "train.snapshot_seconds")
        yield (
            f"{where}: train.snapshot_seconds {[float(t) for t in late]} lie beyond the budget, "
            f"train.max_seconds {budget:g}: the run stops there, so those snapshots would never "
            "be taken; drop them or raise the budget"
        )


def _check_cell(config: Mapping[str, Any], name: str) -> tuple[Cell | None, list[str]]:
    """Cell ``name`` in its typed form, and what is wrong with it (the cell is None when its
    settings do not even make one)."""
    spec = config["cells"][name]
    where = f"cells.{name}"
    dataset = spec["dataset"]
    if dataset not in config["datasets"]:
        return None, [
            f"{where}.dataset: {dataset!r} is not a configured dataset "
            f"(configured: {', '.join(sorted(config['datasets']))})"
        ]
    unknown = sorted(set(resolve_cell(config, name)) - {"model", "train"})
    if unknown:
        return None, [f"{where}: unknown top-level section(s) {unknown}; use model and train"]
    errors = []
    seeds = configured_seeds(config, name)
    overrides = merge(config.get("common_override") or {}, spec.get("override") or {})
    if seeds and "seed" in (overrides.get("train") or {}):
        errors.append(
            f"{where}: seeds {seeds} and train.seed {overrides['train']['seed']} (an override) "
            "both set the training seed; drop one"
        )
    try:
        typed = cell(config, name)
    except ConfigError as exc:
        return None, [*errors, f"{_origin(config, name, str(exc))}: {exc}"]
    errors.extend(_budget_errors(config, name, typed.train))
    errors.extend(_fit_errors(config, typed))
    return typed, errors


def _fit_errors(config: Mapping[str, Any], typed: Cell) -> Iterator[str]:
    """Whether the cell's criterion, sampler, image shape and batch fit its preset and data."""
    where, model, train = f"cells.{typed.name}", typed.model, typed.train
    preset_kind = kind_of(PRESETS[typed.preset]["train"]["criterion"])
    if kind_of(train.criterion) is not preset_kind:
        yield (
            f"{where}.override: train.criterion {train.criterion!r} does not fit preset "
            f"{typed.preset!r} (a {preset_kind.name} trains with "
            f"{', '.join(preset_kind.criteria)})"
        )
    sampler, dataset = typed.sampler, typed.dataset
    if sampler and preset_kind.name != "DDPM":
        yield (
            f"{where}.sampler: only a DDPM cell draws with a scheduler; a "
            f"{preset_kind.name} draws with its own sampler, so remove the setting"
        )
    elif sampler and (sampler.get("steps") or 0) > getattr(model, "n_timesteps", 0):
        yield (
            f"{where}.sampler.steps: {sampler['steps']} exceeds the model's "
            f"T = {model.n_timesteps} steps"
        )
    spec = DATASETS[dataset]
    if tuple(model.image_shape) != spec.image_shape:
        yield (
            f"{where}.override: model.image_shape {list(model.image_shape)} differs from "
            f"dataset {dataset!r}'s {list(spec.image_shape)}"
        )
    n_train = config["datasets"][dataset].get("n_train") or spec.n_train
    if train.batch_size > n_train:
        yield (
            f"{where}.override: train.batch_size {train.batch_size} exceeds the {n_train} "
            f"training images of {dataset!r}"
        )


def real_row_errors(config: Mapping[str, Any], table: str) -> list[str]:
    """Why table ``table`` cannot have a real-vs-real row, or nothing if it can.

    The row scores real training images that the reference features do not use: the
    ``metrics.real_images`` after the reference ones, as many as the largest of
    ``metrics.sizes``. So its cells must share one dataset, and ``metrics.real_images`` plus
    that size must fit in the dataset's training images.
    """
    spec = config["tables"][table]
    where = f"tables.{table}.real"
    cells = [c for c in spec["rows"].values() if c in config["cells"]]
    datasets = sorted({config["cells"][c]["dataset"] for c in cells})
    if len(datasets) != 1:
        return [f"{where}: the rows' cells must share one dataset for a real row, not {datasets}"]
    dataset = datasets[0]
    n_train = config["datasets"][dataset].get("n_train") or DATASETS[dataset].n_train
    n_ref, largest = config["metrics"]["real_images"], max(config["metrics"]["sizes"])
    if n_ref is None or n_ref + largest > n_train:
        return [
            f"{where}: the held-out real images need metrics.real_images ({n_ref}) plus the "
            f"largest of metrics.sizes ({largest}) within the {n_train} training images of "
            f"{dataset!r}; set metrics.real_images to at most {max(n_train - largest, 0)}"
        ]
    return []


def _table_errors(
    config: Mapping[str, Any], table: str, cells: Mapping[str, Cell]
) -> Iterator[str]:
    """What a table's rows lack for its settings: seeds for a spread (``min_seeds``), one
    budget with a curve of enough points (``matched: seconds``), test images for held-out
    ``log p(x)`` (``evidence``). Rows whose cells are not among the valid ``cells`` (their
    own settings failed, and say so, or they are not configured) are left out."""
    spec = config["tables"][table]
    where = f"tables.{table}"
    rows = {label: c for label, c in spec["rows"].items() if c in cells}
    for label, row in rows.items():
        seeds = list(cells[row].seeds)
        if len(seeds) < spec["min_seeds"]:
            yield (
                f"{where}.min_seeds: the table shows the spread across at least "
                f"{spec['min_seeds']} seeds, but rows.{label} ({row}) has {len(seeds)} "
                f"(seeds {seeds}); give the cell more seeds"
            )
    if spec["matched"] == "seconds":
        curve = f"{table}{CURVE_SUFFIX}"
        if curve in config["tables"]:
            yield (
                f"tables.{curve}: the name is taken by the FID-against-seconds curve of table "
                f"{table} (matched: seconds); rename one"
            )
        budgets = {row: cells[row].budget for row in rows.values()}
        for label, row in rows.items():
            if budgets[row] is None:
                yield (
                    f"{where}.matched: rows.{label} ({row}) has no train.max_seconds; every row "
                    "of a table at matched seconds trains for one budget"
                )
                continue
            points = len(cells[row].snapshots) + 1
            if points < CURVE_MIN_POINTS:
                yield (
                    f"{where}.matched: rows.{label} ({row}) has {points} point(s) on its curve "
                    f"of FID against training seconds (each train.snapshot_seconds below its "
                    f"budget of {budgets[row]:g} s, then the budget); it needs at least "
                    f"{CURVE_MIN_POINTS}"
                )
        given = {row: b for row, b in budgets.items() if b is not None}
        if len(set(given.values())) > 1:
            shown = ", ".join(f"{row} {b:g} s" for row, b in given.items())
            yield (
                f"{where}.matched: the rows train for different budgets ({shown}); give them "
                "one train.max_seconds (in common_override, say)"
            )
    if spec["evidence"]:
        images = config["evidence"]["images"]
        for dataset in sorted({config["cells"][c]["dataset"] for c in rows.values()}):
            n_test = config["datasets"][dataset].get("n_test") or DATASETS[dataset].n_test
            if images > n_test:
                yield (
                    f"evidence.images: {images} held-out images for the log p(x) of table "
                    f"{table}, but the test split of {dataset!r} has {n_test}; lower it or "
                    f"raise datasets.{dataset}.n_test"
                )


def _check_benchmarks(bench: Mapping[str, Any]) -> Iterator[str]:
    from kaem.bench import BENCHMARKS
    from kaem.bench.sweeps import SWEEPS

    for bad in sorted(set(bench["only"] or ()) - set(BENCHMARKS)):
        yield f"benchmark.only: {bad!r} is not a benchmark of kaem.bench ({', '.join(BENCHMARKS)})"
    sweeps = bench["sweeps"]
    for key in ("only", "values"):
        for bad in sorted(set(sweeps[key] or ()) - set(SWEEPS)):
            yield (
                f"benchmark.sweeps.{key}: {bad!r} is not a sweep of kaem.bench.sweeps "
                f"({', '.join(SWEEPS)})"
            )


def benchmark_sweeps(config: Mapping[str, Any]) -> list[str]:
    """The sweeps a configuration runs: none when benchmarks or sweeps are off."""
    from kaem.bench.sweeps import SWEEPS

    bench = config["benchmark"]
    if not (bench["enabled"] and bench["sweeps"]["enabled"]):
        return []
    return list(bench["sweeps"]["only"] or SWEEPS)


def check_config(config: Mapping[str, Any]) -> dict[str, Cell]:
    """Checks beyond the schema, on a configuration whose defaults are filled in.

    Returns
    -------
    dict
        Every cell in its typed form (:class:`Cell`), by name: the one validated form of its
        settings that the workflow reads from then on.

    Raises
    ------
    WorkflowConfigError
        Listing every fault with its key: unknown datasets of cells, override keys or values
        that :mod:`kaem.config` rejects, a model whose image shape or criterion does not fit,
        a classifier extractor for unlabelled data, tables naming unknown cells, unknown
        benchmarks.
    """
    errors: list[str] = []
    shared: dict[str, list[str]] = {}  # a fault of common_override -> the cells it reaches
    cells: dict[str, Cell] = {}  # the valid ones: the tables' checks skip the others
    for name in config["cells"]:
        typed, faults = _check_cell(config, name)
        if typed is not None and not faults:
            cells[name] = typed
        for error in faults:
            if error.startswith("common_override"):
                shared.setdefault(error, []).append(name)
            else:
                errors.append(error)
    errors[:0] = [f"{error} (in cells {', '.join(cells)})" for error, cells in shared.items()]
    for name, ds in config["datasets"].items():
        if ds["features"] == "classifier" and DATASETS[name].num_classes == 0:
            errors.append(
                f"datasets.{name}.features: {name!r} has no labels to train a classifier on; "
                "use inception"
            )
    for table, spec in (config.get("tables") or {}).items():
        if table in RESERVED_TABLES:
            errors.append(
                f"tables.{table}: the name is reserved for a table the workflow writes itself "
                f"({', '.join(RESERVED_TABLES)})"
            )
        for label, row in spec["rows"].items():
            if row not in config["cells"]:
                errors.append(f"tables.{table}.rows.{label}: {row!r} is not a configured cell")
        if spec.get("real"):
            errors.extend(real_row_errors(config, table))
        errors.extend(_table_errors(config, table, cells))
    if config["benchmark"]["enabled"]:
        errors.extend(_check_benchmarks(config["benchmark"]))
    if errors:
        raise WorkflowConfigError(
            "invalid workflow configuration:\n" + "\n".join(f"  - {x}" for x in errors)
        )
    return cells


def load_config(config: Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`validate_config` then :func:`check_config`; the filled-in configuration."""
    filled = validate_config(config, schema)
    check_config(filled)
    return filled


# ----------------------------------------------------------------------------- run time


def build_cell_model(cfg: Mapping[str, Any]) -> nn.Module:
    """The untrained model of a resolved cell (:func:`resolve_cell`), seeded by ``train.seed``."""
    from kaem.kinds import build

    train = cfg.get("train", {})
    criterion = train.get("criterion", TrainConfig.criterion)
    return build(cfg["model"], criterion, seed=int(train.get("seed", TrainConfig.seed)))


def check_models(cells: Mapping[str, Cell]) -> None:
    """Build every cell's model once, so settings no model accepts stop the run up front.

    Parameters
    ----------
    cells
        The typed cells of :func:`check_config`.

    Raises
    ------
    WorkflowConfigError
        Naming each cell whose model cannot be built and why (e.g. a CNN whose layers do not
        make the dataset's image size), or whose criterion cannot train it (a Langevin
        criterion on a prior without a joint density).
    """
    from kaem.inference.posterior import check_langevin_prior

    errors = []
    for name, typed in cells.items():
        try:
            model = typed.build()
        except (ValueError, TypeError, ConfigError) as exc:
            errors.append(f"cells.{name}.override: the model cannot be built: {exc}")
            continue
        criterion = typed.train.criterion
        if criterion in ("ula", "thermodynamic"):
            try:
                check_langevin_prior(model, f"train.criterion {criterion!r}")
            except ValueError as exc:
                errors.append(f"cells.{name}.override: {exc}")
    if errors:
        raise WorkflowConfigError(
            "invalid workflow configuration:\n" + "\n".join(f"  - {x}" for x in errors)
        )


def write_yaml(data: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``data`` as YAML, atomically."""
    from kaem.io import atomic_write_text

    path = Path(path)
    atomic_write_text(yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False), path)
    return path


@contextlib.contextmanager
def job_context(log: str | os.PathLike | None, threads: int = 1) -> Iterator[None]:
    """Run a workflow job: its output and errors go to ``log``, PyTorch uses ``threads``.

    Progress bars (tqdm writes to stderr) and tracebacks end up in the job's log file,
    which Snakemake shows when a job fails (``--show-failed-logs``).
    """
    torch.set_num_threads(max(1, int(threads)))
    if log is None:
        yield
        return
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log, "w", buffering=1) as f,
        contextlib.redirect_stderr(f),
        contextlib.redirect_stdout(f),
    ):
        try:
            yield
        except BaseException:
            import traceback

            traceback.print_exc(file=f)
            raise
