"""The workflow's cells: a preset with overrides, one typed form per cell, and what it is.

A cell of ``config/config.yaml`` names a dataset and a preset (:mod:`kaem.presets`, where the
paper's numbers live); its settings are that preset with ``common_override`` and then its own
``override`` merged in (:func:`resolve_cell`). :func:`cell` reads them once into a
:class:`Cell`, the typed form the workflow reads from then on; :class:`CellInfo` describes it
for tables and captions.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import nn

from kaem.config import (
    RESUMABLE_KEYS,
    DDPMConfig,
    LEBMConfig,
    ModelConfig,
    TrainConfig,
    VAEConfig,
    from_dict,
)
from kaem.kinds import MODEL_KINDS, kind_of
from kaem.presets import PRESETS, merge

__all__ = [
    "Cell",
    "CellInfo",
    "cell",
    "cell_budget",
    "cell_info",
    "cell_sampler",
    "cell_seeds",
    "cell_sizes",
    "configured_seeds",
    "has_evidence",
    "resolve_cell",
    "run_key",
    "snapshot_times",
]

_CRITERION_NAMES = {
    "importance": "IS",
    "ula": "ULA",
    "thermodynamic": "thermodynamic",
    "elbo": "ELBO",
    "lebm": "short-run ULA",
    "ddpm": "noise prediction",
}


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


def configured_seeds(config: Mapping[str, Any], name: str) -> list[int] | None:
    """The seeds written for cell ``name`` (its own ``seeds``, else the top-level ``seeds``),
    or None where neither is given and ``train.seed`` decides."""
    seeds = config["cells"][name].get("seeds") or config.get("seeds")
    return [int(s) for s in seeds] if seeds else None


def cell_seeds(config: Mapping[str, Any], name: str) -> list[int]:
    """The training seeds of cell ``name``: its own ``seeds``, else the top-level ``seeds``,
    else the one ``train.seed`` of its settings. Each seed is one training job."""
    return list(cell(config, name).seeds)


@dataclass(frozen=True)
class Cell:
    """One cell in its typed form: what every job and table of the cell reads.

    Built once per run by :func:`kaem.pipeline.config.check_config` (through :func:`cell`),
    which is where its settings are validated; the jobs receive :meth:`settings` (plain data
    that crosses the process boundary, and whose hash names the run folder) and read it back
    with :func:`kaem.config.from_dict` once.
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
        seeds=tuple(configured_seeds(config, name) or [train.seed]),
        sampler=cell_sampler(config, name),
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
