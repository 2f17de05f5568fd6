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
reported at once. A cell's settings are its preset (:mod:`kaem.presets`, where the paper's
numbers live) with ``common_override`` and then the cell's ``override`` merged in
(:func:`resolve_cell`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from torch import nn

from kaem.config import (
    RESUMABLE_KEYS,
    ConfigError,
    DDPMConfig,
    LEBMConfig,
    ModelConfig,
    TrainConfig,
    VAEConfig,
    from_dict,
    load_yaml,
    parse_yaml,
)
from kaem.data import DATASETS
from kaem.kinds import MODEL_KINDS, kind_of
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

_CRITERION_NAMES = {
    "importance": "IS",
    "ula": "ULA",
    "thermodynamic": "thermodynamic",
    "elbo": "ELBO",
    "lebm": "short-run ULA",
    "ddpm": "noise prediction",
}


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


# ----------------------------------------------------------------------------- cells


class CellInfo(NamedTuple):
    """What a cell is: its dataset, its kind of model and what that model is made of.

    The fields that only a KAEM has (its prior's basis, reference and kind) are None for the
    other kinds; ``generator`` is None for a model without one of KAEM's generators (the
    DDPM's UNet).
    """

    name: str
    dataset: str
    model: str  # a kind of kaem.kinds: KAEM, VAE, LEBM or DDPM
    basis: str | None  # KAEM: the prior's basis
    criterion: str  # importance, ula, thermodynamic, elbo, lebm or ddpm
    sampler: str  # a short label of the criterion
    reference: str | None  # KAEM: the prior's reference density
    prior: str | None  # KAEM: univariate or mixture
    generator: str | None  # kan or cnn
    n_chains: int | None = None  # thermodynamic: chains per temperature
    seeds: tuple[int, ...] = (0,)  # training seeds, one job each
    likelihood_variance: float | None = None  # Gaussian, on images in [0, 1]; None: no likelihood


def resolve_cell(config: Mapping[str, Any], name: str, seed: int | None = None) -> dict[str, Any]:
    """The ``{model, train}`` settings of cell ``name``: preset, common and own overrides.

    Parameters
    ----------
    config
        A validated configuration (:func:`load_config`).
    name
        A key of ``config["cells"]``.
    seed
        One of the cell's seeds (:func:`cell_seeds`): it becomes ``train.seed``. None: the
        settings as configured.
    """
    cells = config["cells"]
    if name not in cells:
        raise KeyError(f"no cell {name!r}; configured cells are {sorted(cells)}")
    cell = cells[name]
    cfg = merge(PRESETS[cell["preset"]], config.get("common_override") or {})
    cfg = merge(cfg, cell.get("override") or {})
    if seed is not None:
        cfg = merge(cfg, {"train": {"seed": int(seed)}})
    return cfg


def _explicit_seeds(config: Mapping[str, Any], name: str) -> list[int] | None:
    seeds = config["cells"][name].get("seeds") or config.get("seeds")
    return [int(s) for s in seeds] if seeds else None


def cell_seeds(config: Mapping[str, Any], name: str) -> list[int]:
    """The training seeds of cell ``name``: its own ``seeds``, else the top-level ``seeds``,
    else the one ``train.seed`` of its settings. Each seed is one training job."""
    seeds = _explicit_seeds(config, name)
    if seeds:
        return seeds
    return [int(resolve_cell(config, name)["train"].get("seed", TrainConfig.seed))]


@dataclass(frozen=True)
class Cell:
    """One cell in its typed form: what every job and table of the cell reads.

    Built once per run by :func:`check_config` (through :func:`cell`), which is where its
    settings are validated; the jobs receive :meth:`settings` (plain data that crosses the
    process boundary, and whose hash names the run folder) and read it back with
    :func:`kaem.config.from_dict` once.
    """

    name: str
    dataset: str
    preset: str
    resolved: Mapping[str, Any]  # {model, train}: the preset with the overrides merged in
    model: ModelConfig | VAEConfig | LEBMConfig | DDPMConfig  # the config of its kind
    train: TrainConfig
    seeds: tuple[int, ...]  # training seeds, one job each
    sampler: Mapping[str, Any]  # a DDPM's generate keywords (scheduler, steps, eta)
    sizes: tuple[int, ...]  # regression sizes, ascending

    def settings(self, seed: int | None = None) -> dict[str, Any]:
        """The ``{model, train}`` settings of one training seed (``train.seed``), as data."""
        cfg = copy.deepcopy(dict(self.resolved))
        return cfg if seed is None else merge(cfg, {"train": {"seed": int(seed)}})

    @property
    def budget(self) -> float | None:
        """The training budget in seconds (``train.max_seconds``), or None."""
        return self.train.max_seconds

    @property
    def snapshots(self) -> list[float]:
        """The snapshot times below the budget (``train.snapshot_seconds``), ascending, each
        once: the points of the cell's curve of FID against training seconds before the last,
        which is the final model at the budget (a snapshot at the budget is that model)."""
        budget, times = self.budget, self.train.snapshot_seconds
        return sorted({float(t) for t in times if budget is None or t < budget})

    def build(self) -> nn.Module:
        """The cell's untrained model, seeded by ``train.seed``."""
        return kind_of(self.train.criterion).build(self.model, seed=self.train.seed)

    @property
    def info(self) -> CellInfo:
        """The cell described for tables and captions."""
        criterion = self.train.criterion
        kind = kind_of(criterion)
        common = dict(
            name=self.name,
            dataset=self.dataset,
            model=kind.name,
            criterion=criterion,
            seeds=self.seeds,
            likelihood_variance=getattr(self.model, "likelihood_variance", None),
        )
        if kind.name != "KAEM":
            generator = getattr(self.model, "generator", None)
            return CellInfo(
                **common,
                basis=None,
                sampler=_CRITERION_NAMES[criterion],
                reference=None,
                prior=None,
                generator=None if generator is None else generator.kind,
            )
        sampler, n_chains = _CRITERION_NAMES[criterion], None
        if criterion == "thermodynamic":
            thermo = self.train.thermodynamic
            n_chains = thermo.n_chains
            sampler = f"thermodynamic (N_t={thermo.n_temps}, S={n_chains})"
        prior = self.model.prior
        return CellInfo(
            **common,
            basis=prior.basis,
            sampler=sampler,
            reference=prior.reference.name,
            prior=prior.kind,
            generator=self.model.generator.kind,
            n_chains=n_chains,
        )


def cell(config: Mapping[str, Any], name: str) -> Cell:
    """Cell ``name`` of a schema-validated configuration in its typed form.

    Raises
    ------
    KeyError
        If there is no such cell.
    ConfigError
        If its resolved settings are not valid for the kind of model its preset trains,
        naming the setting (``train.max_seconds: ...``).
    """
    resolved = resolve_cell(config, name)
    preset = config["cells"][name]["preset"]
    kind = kind_of(PRESETS[preset]["train"]["criterion"])
    train = from_dict(TrainConfig, resolved.get("train"), "train")
    model = from_dict(kind.config, resolved.get("model"), "model")
    return Cell(
        name=name,
        dataset=config["cells"][name]["dataset"],
        preset=preset,
        resolved=resolved,
        model=model,
        train=train,
        seeds=tuple(_explicit_seeds(config, name) or [train.seed]),
        sampler=dict(config["cells"][name].get("sampler") or {}),
        sizes=tuple(cell_sizes(config, name)),
    )


def cell_info(config: Mapping[str, Any], name: str) -> CellInfo:
    """Describe cell ``name`` by its dataset, model, basis, sampler and reference prior."""
    return cell(config, name).info


def cell_sampler(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The keywords of ``generate`` that draw cell ``name``'s generated set: a DDPM cell's
    ``sampler`` (scheduler, steps, eta), nothing for the other kinds (their own sampler)."""
    sampler = config["cells"][name].get("sampler")
    return dict(sampler) if sampler else {}


def cell_sizes(config: Mapping[str, Any], name: str) -> list[int]:
    """Regression sizes of cell ``name`` (its own, else ``metrics.sizes``), ascending."""
    sizes = config["cells"][name].get("sizes") or config["metrics"]["sizes"]
    return sorted(int(s) for s in sizes)


def cell_budget(config: Mapping[str, Any], name: str) -> float | None:
    """The training budget of cell ``name`` in seconds (``train.max_seconds``), or None."""
    return cell(config, name).budget


def snapshot_times(config: Mapping[str, Any], name: str) -> list[float]:
    """The snapshot times of cell ``name`` below its budget (:attr:`Cell.snapshots`)."""
    return cell(config, name).snapshots


def has_evidence(kind: str) -> bool:
    """Whether held-out ``log p(x)`` has an estimator for models of kind ``kind`` (a name of
    :data:`kaem.kinds.MODEL_KINDS`): a KAEM or a VAE, not the LEBM or the DDPM."""
    from kaem.inference.evidence import has_estimator

    return has_estimator(MODEL_KINDS[kind].cls)


#: Settings of a dataset that change which images its cells train on.
_DATA_KEYS = ("source", "n_train", "n_test", "seed")


def run_key(cfg: Mapping[str, Any], dataset: Mapping[str, Any] | None = None) -> str:
    """A short hash of the settings a training checkpoint depends on.

    Keys that a resumed run may change (:data:`kaem.config.RESUMABLE_KEYS`, such as
    ``epochs``) are left out, so a longer run continues from a shorter one's checkpoint,
    while any other change starts afresh in a new folder instead of failing on a mismatched
    checkpoint. The same holds for ``dataset`` (the cell's entry of ``datasets``): a change
    of the settings that make its images (``source``, ``n_train``, ``n_test``, ``seed``)
    trains afresh, where resuming would be refused as training on other data.
    """
    train = {k: v for k, v in cfg.get("train", {}).items() if k not in RESUMABLE_KEYS}
    key: dict[str, Any] = {"model": cfg.get("model", {}), "train": train}
    if dataset is not None:
        key["data"] = {k: dataset.get(k) for k in _DATA_KEYS}
    text = json.dumps(key, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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
    seeds = _explicit_seeds(config, name)
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


def _fit_errors(config: Mapping[str, Any], cell: Cell) -> Iterator[str]:
    """Whether the cell's criterion, sampler, image shape and batch fit its preset and data."""
    where, model, train = f"cells.{cell.name}", cell.model, cell.train
    preset_kind = kind_of(PRESETS[cell.preset]["train"]["criterion"])
    if kind_of(train.criterion) is not preset_kind:
        yield (
            f"{where}.override: train.criterion {train.criterion!r} does not fit preset "
            f"{cell.preset!r} (a {preset_kind.name} trains with "
            f"{', '.join(preset_kind.criteria)})"
        )
    sampler, dataset = cell.sampler, cell.dataset
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
    for label, cell in rows.items():
        seeds = list(cells[cell].seeds)
        if len(seeds) < spec["min_seeds"]:
            yield (
                f"{where}.min_seeds: the table shows the spread across at least "
                f"{spec['min_seeds']} seeds, but rows.{label} ({cell}) has {len(seeds)} "
                f"(seeds {seeds}); give the cell more seeds"
            )
    if spec["matched"] == "seconds":
        curve = f"{table}{CURVE_SUFFIX}"
        if curve in config["tables"]:
            yield (
                f"tables.{curve}: the name is taken by the FID-against-seconds curve of table "
                f"{table} (matched: seconds); rename one"
            )
        budgets = {cell: cells[cell].budget for cell in rows.values()}
        for label, cell in rows.items():
            if budgets[cell] is None:
                yield (
                    f"{where}.matched: rows.{label} ({cell}) has no train.max_seconds; every row "
                    "of a table at matched seconds trains for one budget"
                )
                continue
            points = len(cells[cell].snapshots) + 1
            if points < CURVE_MIN_POINTS:
                yield (
                    f"{where}.matched: rows.{label} ({cell}) has {points} point(s) on its curve "
                    f"of FID against training seconds (each train.snapshot_seconds below its "
                    f"budget of {budgets[cell]:g} s, then the budget); it needs at least "
                    f"{CURVE_MIN_POINTS}"
                )
        given = {cell: b for cell, b in budgets.items() if b is not None}
        if len(set(given.values())) > 1:
            shown = ", ".join(f"{cell} {b:g} s" for cell, b in given.items())
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
        for label, cell in spec["rows"].items():
            if cell not in config["cells"]:
                errors.append(f"tables.{table}.rows.{label}: {cell!r} is not a configured cell")
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
