"""Frozen configuration dataclasses, built once at the edge from a mapping (a YAML file).

Constructors of the model take plain numbers; these dataclasses only carry and validate the
numbers. ``from_dict`` rejects unknown keys, wrong types and values out of their range (the
:class:`Bound` of a field's annotation) with a message naming the key, so a typo or an
impossible value in a config file fails before any work is done.

Every YAML file and ``--set`` value of the project is read by :func:`load_yaml` and
:func:`parse_yaml`: numbers as YAML 1.2 and Python read them (``1e-3``, ``1E3``, ``.5`` are
numbers, where PyYAML's YAML 1.1 reads ``1e-3`` as a string), and a key given twice in one
mapping is an error naming both lines, never a silent overwrite.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import yaml

__all__ = [
    "RESUMABLE_KEYS",
    "ActivationName",
    "BasisName",
    "Bound",
    "ConfigError",
    "DDPMConfig",
    "EnergyActivationName",
    "GeneratorConfig",
    "GridUpdateConfig",
    "ImportanceConfig",
    "KANConfig",
    "LEBMConfig",
    "LangevinConfig",
    "ModelConfig",
    "PriorConfig",
    "ReferenceConfig",
    "ThermodynamicConfig",
    "TrainConfig",
    "VAEConfig",
    "YAMLLoader",
    "from_dict",
    "load_yaml",
    "parse_yaml",
    "to_dict",
]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


# ----------------------------------------------------------------------------- YAML

#: Digits with optional single underscores between them, as YAML 1.1 and Python allow.
_DIGITS = r"[0-9](?:_?[0-9])*"

#: Integers of the YAML 1.2 core schema (decimal, ``0o`` octal, ``0x`` hexadecimal).
_INT = re.compile(rf"^(?:[-+]?{_DIGITS}|0o[0-7]+|0x[0-9a-fA-F]+)$")

#: Floats of the YAML 1.2 core schema: ``1e-3``, ``1E3``, ``.5``, ``2.``, ``.inf``, ``.nan``.
_FLOAT = re.compile(
    rf"^(?:[-+]?(?:\.{_DIGITS}|{_DIGITS}(?:\.(?:{_DIGITS})?)?)(?:[eE][-+]?{_DIGITS})?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)

_INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the numbers of YAML 1.2 and no duplicate keys.

    Integers and floats are resolved by the YAML 1.2 core schema (``017`` is 17, ``1e-3`` is
    0.001); booleans, null and the rest are PyYAML's. A key given twice in one mapping raises
    :class:`yaml.YAMLError` naming its dotted path and both lines (keys brought in by a merge
    key, ``<<: *anchor``, may be overridden: that is what a merge is for).
    """

    yaml_implicit_resolvers: typing.ClassVar[dict[str, list[tuple[str, re.Pattern]]]] = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT_TAG, _FLOAT_TAG)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, "", set())
        return super().construct_document(node)

    def construct_yaml_int(self, node: yaml.Node) -> int:  # type: ignore[override]
        text = str(self.construct_scalar(node)).replace("_", "")
        sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
        base = {"0o": 8, "0x": 16}.get(digits[:2], 10)
        return sign * int(digits[2:] if base != 10 else digits, base)


YAMLLoader.add_implicit_resolver(_INT_TAG, _INT, list("-+0123456789"))
YAMLLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+.0123456789"))
YAMLLoader.add_constructor(_INT_TAG, YAMLLoader.construct_yaml_int)


def _refuse_duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> None:
    """Raise :class:`yaml.YAMLError` for a key given twice in a mapping under ``node``."""
    if id(node) in seen:  # an alias of a node already checked (or a recursive one)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
                continue
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            where = f"{path}.{name}" if path else name
            ident = (key.tag, str(key.value))
            if isinstance(key, yaml.ScalarNode) and ident in first:
                raise yaml.YAMLError(
                    f"{where} is given twice, at line {first[ident].start_mark.line + 1} and "
                    f"line {key.start_mark.line + 1}; keep one"
                )
            first[ident] = key
            _refuse_duplicate_keys(value, where, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{path}[{i}]", seen)


def parse_yaml(text: str, source: str = "YAML") -> Any:
    """Parse ``text`` with :class:`YAMLLoader`.

    Parameters
    ----------
    text
        A YAML document (a file's contents, or a ``--set`` value).
    source
        What the text is, for messages (a file name, ``--set train.epochs``).

    Raises
    ------
    ConfigError
        ``source: ...`` with the line and column of a syntax error, or the dotted key and
        both lines of a duplicate key.
    """
    try:
        return yaml.load(text, Loader=YAMLLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_yaml(path: str | os.PathLike) -> Any:
    """Read the YAML file ``path`` with :class:`YAMLLoader` (see :func:`parse_yaml`).

    Raises
    ------
    ConfigError
        Naming the file: not valid YAML (line and column), or a duplicate key (both lines).
    OSError
        If the file cannot be read.
    """
    path = Path(path)
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))


def _yaml12_number(text: str) -> float | None:
    """The number a YAML 1.1 loader left as the string ``text`` (``"1e-3"``), or None."""
    if not _FLOAT.match(text) or not isinstance(yaml.safe_load(text), str):
        return None
    return float(text.replace("_", ""))


#: Keys of the training config that may change between a run and its resumption.
RESUMABLE_KEYS = frozenset(
    {
        "epochs",
        "max_steps",
        "max_seconds",
        "snapshot_seconds",
        "checkpoint_every",
        "log_every",
        "compile",
    }
)

#: Keys that were renamed so that config names equal the arguments they feed:
#: ``{class name: {old key: new dotted key}}``, for an error that says what to write.
_RENAMED = {
    "TrainConfig": {
        "importance_samples": "importance.n_samples",
        "resampler": "importance.resampler",
        "ess_threshold": "importance.ess_threshold",
    },
    "LangevinConfig": {"steps": "n_steps"},
    "ThermodynamicConfig": {"chains": "n_chains"},
}


#: Keys that were removed, with what replaced them: ``{class name: {key: explanation}}``.
_REMOVED = {
    "PriorConfig": {
        "table_points": "the guide table is gone: every path inverts the CDF by search "
        "(model.prior.sampling: search, or compiled for the same samples by compiled CPU loops)",
    },
}


class Bound(NamedTuple):
    """The range a number must lie in, ``low <= value <= high`` (``<`` where open).

    Attached to a field as ``Annotated[int, Bound(1)]``; :func:`from_dict` checks it.
    """

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def check(self, value: float, path: str) -> None:
        """Raise :class:`ConfigError` naming ``path`` if ``value`` is out of range."""
        low_ok = self.low is None or (value > self.low if self.open_low else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.open_high else value <= self.high)
        if not (low_ok and high_ok):
            raise ConfigError(f"{path}: {value!r} is out of range; it must be {self}")

    def __str__(self) -> str:
        if self.high is None:
            if self.low == 0 and self.open_low:
                return "positive"
            return f"{'greater than' if self.open_low else 'at least'} {self.low:g}"
        left = "(" if self.open_low else "["
        right = ")" if self.open_high else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


PositiveInt = Annotated[int, Bound(1)]
NonNegativeInt = Annotated[int, Bound(0)]
PositiveFloat = Annotated[float, Bound(0.0, open_low=True)]
NonNegativeFloat = Annotated[float, Bound(0.0)]
Fraction = Annotated[float, Bound(0.0, 1.0)]
_Beta = Annotated[float, Bound(0.0, 1.0, open_high=True)]


@dataclass(frozen=True)
class ReferenceConfig:
    """Reference prior ``pi_0``: ``gaussian``, ``uniform``, ``lognormal`` or ``none``.

    ``domain`` defaults to the reference's own (:data:`kaem.model.prior.DEFAULT_DOMAINS`).
    """

    name: Literal["gaussian", "uniform", "lognormal", "none"] = "gaussian"
    domain: tuple[float, float] | None = None
    loc: float = 0.0
    scale: PositiveFloat = 1.0


#: Names the configuration accepts, kept equal to the code's tables by the tests
#: (:data:`kaem.model.bases.BASES`, :data:`kaem.model.kan.ACTIVATIONS`).
BasisName = Literal["rbf", "morlet", "mexican_hat", "dog", "chebyshev", "fourier", "bspline"]
ActivationName = Literal["relu", "silu", "leaky_relu", "tanh", "gelu", "none"]
#: Activations of Pang et al.'s energy MLP (their ``--e_activation``: gelu, lrelu, swish,
#: mish), kept equal to :data:`kaem.baselines.lebm.ENERGY_ACTIVATIONS` by the tests.
EnergyActivationName = Literal["gelu", "leaky_relu", "silu", "mish"]


@dataclass(frozen=True)
class KANConfig:
    """The KAN settings the prior's energies and a KAN generator share (App. B).

    ``basis`` names the univariate functions of every edge; ``grid_size`` and ``degree`` size
    them, ``tau`` (trainable or not) is their bandwidth and ``omega`` a wavelet's frequency;
    ``base_activation`` is the residual function beside them, and the three scales set the
    initialisation of the coefficients and of the two branches.
    """

    basis: BasisName = "rbf"
    grid_size: PositiveInt = 20
    degree: NonNegativeInt = 3
    tau: PositiveFloat = 1.0
    trainable_tau: bool = True
    omega: PositiveFloat = 5.0
    base_activation: ActivationName = "relu"
    coef_init_scale: NonNegativeFloat = 0.1
    base_scale: float = 1.0
    spline_scale: float = 1.0

    def basis_settings(self) -> dict[str, Any]:
        """The keywords of :func:`kaem.model.bases.build_basis` besides name, width and range."""
        names = ("grid_size", "degree", "tau", "trainable_tau", "omega")
        return {name: getattr(self, name) for name in names}

    def layer_settings(self) -> dict[str, Any]:
        """The keywords of :class:`kaem.model.kan.KANLayer` besides widths, basis and generator."""
        names = ("base_activation", "coef_init_scale", "base_scale", "spline_scale")
        return {name: getattr(self, name) for name in names}


@dataclass(frozen=True)
class PriorConfig(KANConfig):
    """Energy prior (eqs. 13-18). ``widths = (P, Q)`` as in the paper's ``layer_widths``."""

    kind: Literal["univariate", "mixture"] = "univariate"
    widths: tuple[PositiveInt, PositiveInt] = (40, 81)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    quadrature: Literal["gauss_legendre", "trapezium"] = "gauss_legendre"
    n_nodes: Annotated[int, Bound(2)] = 200
    shared_uniforms: bool = True
    train_proportions: bool = True
    proportion_l1: NonNegativeFloat = 0.0
    sampling: Literal["search", "compiled"] = "search"


@dataclass(frozen=True)
class GeneratorConfig(KANConfig):
    """Generator: ``kan`` (App. B.2) or ``cnn`` (App. F.2.1)."""

    kind: Literal["kan", "cnn"] = "kan"
    hidden_widths: tuple[PositiveInt, ...] | None = None
    grid_range: tuple[float, float] = (-1.2, 1.2)
    layer_norm: bool = False
    channels: tuple[PositiveInt, ...] = (128, 64, 32)
    leaky_slope: NonNegativeFloat = 0.2
    output_activation: Literal["sigmoid", "tanh", "none"] = "sigmoid"
    noise: NonNegativeFloat = 0.1


@dataclass(frozen=True)
class ModelConfig:
    """A whole KAEM: image shape, prior, generator and likelihood variance (eq. 8)."""

    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (1, 28, 28)
    prior: PriorConfig = field(default_factory=PriorConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    likelihood_variance: PositiveFloat = 0.1


@dataclass(frozen=True)
class LEBMConfig:
    """Pang et al.'s (2020) latent EBM (:mod:`kaem.baselines.lebm`) with one of KAEM's generators.

    ``energy_widths`` are the hidden widths of the energy MLP, ``energy_activation`` its
    activation (Pang et al.'s ``train_svhn.py`` trains GELU) and ``energy_slope`` the negative
    slope of ``leaky_relu``; ``base_scale`` is ``sigma`` of the Gaussian base;
    ``prior_n_steps`` and ``prior_step_size`` set the short-run prior sampler (``eta = s^2 /
    2``: Pang et al.'s ``s = 0.4`` is ``eta = 0.08``). ``likelihood_variance`` is the variance
    of the Gaussian likelihood on images in ``[0, 1]`` (Pang et al.'s ``sigma = 0.3`` on
    ``[-1, 1]`` is 0.0225 here).
    """

    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (3, 32, 32)
    latent_dim: PositiveInt = 81
    energy_widths: tuple[PositiveInt, ...] = (200, 200)
    energy_activation: EnergyActivationName = "gelu"
    energy_slope: NonNegativeFloat = 0.2
    base_scale: PositiveFloat = 1.0
    prior_n_steps: PositiveInt = 60
    prior_step_size: PositiveFloat = 0.08
    generator: GeneratorConfig = field(default_factory=lambda: GeneratorConfig(kind="cnn"))
    likelihood_variance: PositiveFloat = 0.0225


@dataclass(frozen=True)
class DDPMConfig:
    """A denoising diffusion model (Ho et al. 2020; :mod:`kaem.baselines.ddpm`) on diffusers' UNet.

    The network is ``UNet2DModel`` with one residual block per level (``layers_per_block``)
    of ``channels`` output channels, no attention, GroupNorm of ``norm_groups`` groups, the
    ``activation`` between convolutions and a sinusoidal time embedding of width
    ``time_embedding_dim`` (None: ``4 * channels[0]``). Each level after the first halves
    the image, so ``H`` and ``W`` must be divisible by ``2 ** (len(channels) - 1)``.

    The forward process has ``n_timesteps`` steps ``T`` with betas from ``beta_start`` to
    ``beta_end`` on ``beta_schedule``; the network predicts the noise (eq. 14). Ancestral
    sampling (Algorithm 2) uses ``sigma_t^2 = beta_t`` (``variance: fixed_large``) or the
    posterior's ``beta~_t`` (``fixed_small``).
    """

    image_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (3, 32, 32)
    channels: tuple[PositiveInt, ...] = (32, 64, 128, 256)
    layers_per_block: PositiveInt = 1
    norm_groups: PositiveInt = 8
    activation: Literal["gelu", "silu", "mish", "relu"] = "gelu"
    time_embedding_dim: PositiveInt | None = None
    n_timesteps: Annotated[int, Bound(2)] = 1000
    beta_start: Annotated[float, Bound(0.0, 1.0, open_low=True, open_high=True)] = 1e-4
    beta_end: Annotated[float, Bound(0.0, 1.0, open_low=True, open_high=True)] = 0.02
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    variance: Literal["fixed_large", "fixed_small"] = "fixed_large"


@dataclass(frozen=True)
class GridUpdateConfig:
    """Grid updating schedule (Liu et al. 2024; Table 4).

    The first update happens at step 1; afterwards the interval starts at ``frequency`` steps
    and grows by ``1 / decay`` after every update.
    """

    enabled: bool = True
    prior: bool = True
    generator: bool = True
    samples: Annotated[int, Bound(2)] = 100
    frequency: PositiveInt = 100
    decay: Annotated[float, Bound(0.0, 1.0, open_low=True)] = 0.999
    ratio: Fraction = 0.05


@dataclass(frozen=True)
class LangevinConfig:
    """Posterior Langevin sampling (App. F.1): ULA-MLE and the thermodynamic criterion.

    ``sampler``: ``ula`` (the paper) or ``mala`` (Metropolis-adjusted, exact; in the
    thermodynamic criterion at every temperature, with swaps between them).

    ``nonfinite``: ``raise`` stops with an error naming the step, temperature and chain;
    ``halve_and_retry`` halves the step size and redoes the step, at most ``max_retries``
    times.
    """

    sampler: Literal["ula", "mala"] = "ula"
    n_steps: PositiveInt = 40
    step_size: PositiveFloat = 0.005
    nonfinite: Literal["raise", "halve_and_retry"] = "raise"
    max_retries: NonNegativeInt = 3


@dataclass(frozen=True)
class ThermodynamicConfig:
    """Power posteriors and the steppingstone criterion (eqs. 21-25, 40; Table 5).

    ``n_temps`` is ``N_t`` (``N_t + 1`` temperatures from 0 to 1); ``n_chains`` is the number
    of chains per data point and temperature (the paper: one).
    """

    n_temps: PositiveInt = 5
    p_start: PositiveFloat = 2.0
    p_end: PositiveFloat = 0.5
    n_cycles: NonNegativeInt = 0
    swap_every: PositiveInt = 1
    n_chains: PositiveInt = 1


@dataclass(frozen=True)
class ImportanceConfig:
    """Importance sampling with the prior as proposal (eqs. 33-39): ``S`` draws, resampling.

    Rows whose effective sample size falls below ``ess_threshold * n_samples`` are resampled.
    """

    n_samples: PositiveInt = 100
    resampler: Literal["residual", "systematic", "stratified", "multinomial"] = "residual"
    ess_threshold: Fraction = 0.5


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (Tables 4-5).

    ``criterion``: ``importance`` (IS maximum likelihood), ``ula`` (Langevin posterior
    maximum likelihood), ``thermodynamic`` (steppingstone over power posteriors), ``elbo``
    (the VAE baseline), ``lebm`` (Pang et al.'s latent EBM, short-run Langevin for both the
    prior and the posterior, with the ``langevin`` section's posterior settings) or ``ddpm``
    (the diffusion baseline's noise-prediction loss, Ho et al. 2020 eq. 14).

    ``prior_learning_rate``, if set, is the learning rate of the prior's parameters (the rest
    keep ``learning_rate``): Pang et al. train their energy at 2e-5 and the generator at 1e-4.

    ``lr_decay`` multiplies every learning rate by itself once an epoch, from epoch
    ``lr_decay_lag`` on: in epoch ``e`` (from 0) the rate is ``learning_rate * lr_decay **
    max(0, e - lr_decay_lag)``. Pang et al.'s scripts decay by 0.998 with a lag of 1: their
    ``ExponentialLR.step(epoch=e)`` at the end of epoch ``e`` sets the rate of epoch ``e + 1``
    to ``0.998 ** e``, so epochs 0 and 1 both train at the initial rate.

    ``max_seconds`` is a budget of training time: the run stops after the first update that
    brings its training seconds (the sum of its updates' host seconds, grid updates included,
    checkpoints and logs not; kept across resumes) to the budget, or at its planned steps if
    those come first. ``snapshot_seconds`` are training times at which a copy of the model is
    kept (``snapshot-<seconds>s.pt``, loadable by :func:`kaem.load_model`), taken after the
    first update that reaches each: a run compared at matched time, sampled along the way.

    ``compile`` runs the generator (the VAE's decoder) through ``torch.compile`` for the run;
    it changes no result beyond rounding and may change while a run resumes. It is off by
    default: on two CPU cores it made the SVHN ULA-MLE step slower (1.63 s against 1.06 s
    eager, after a 28 s compile; untried on a GPU).
    """

    criterion: Literal["importance", "ula", "thermodynamic", "elbo", "lebm", "ddpm"] = "importance"
    epochs: PositiveFloat = 10.0
    max_steps: PositiveInt | None = None
    max_seconds: PositiveFloat | None = None
    snapshot_seconds: tuple[PositiveFloat, ...] = ()
    batch_size: PositiveInt = 100
    learning_rate: PositiveFloat = 1e-3
    prior_learning_rate: PositiveFloat | None = None
    betas: tuple[_Beta, _Beta] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    lr_decay: Annotated[float, Bound(0.0, 1.0, open_low=True)] = 1.0
    lr_decay_lag: NonNegativeInt = 0
    seed: NonNegativeInt = 0
    importance: ImportanceConfig = field(default_factory=ImportanceConfig)
    langevin: LangevinConfig = field(default_factory=LangevinConfig)
    thermodynamic: ThermodynamicConfig = field(default_factory=ThermodynamicConfig)
    grid_update: GridUpdateConfig = field(default_factory=GridUpdateConfig)
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 1
    compile: bool = False


@dataclass(frozen=True)
class VAEConfig:
    """The VAE baseline (App. F.2.2): a CNN encoder and a decoder.

    The decoder is the CNN of ``decoder_channels`` matching the KAEM CNN generator (App.
    F.2.2), or, when ``generator`` is given, KAEM's own generator of those settings (a KAN
    generator for the digits, say) from the ``latent_dim`` latents: a comparison that changes
    the prior and the inference alone.
    """

    image_shape: tuple[int, int, int] = (3, 32, 32)
    latent_dim: PositiveInt = 81
    encoder_channels: tuple[PositiveInt, ...] = (32, 64, 128)
    decoder_channels: tuple[PositiveInt, ...] = (128, 64, 32)
    leaky_slope: NonNegativeFloat = 0.2
    generator: GeneratorConfig | None = None
    likelihood_variance: PositiveFloat = 0.25


T = TypeVar("T")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        value = _convert(value, args[0], path)
        for bound in args[1:]:
            bound.check(value, path)
        return value
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(
            _convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and (number := _yaml12_number(value)) is not None:
            return number  # 1e-3 from a YAML 1.1 loader (Snakemake's, say) is still a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported config type {tp!r}")


def from_dict(cls: type[T], mapping: Mapping[str, Any] | None, path: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, validating names and types.

    Parameters
    ----------
    cls
        A config dataclass (e.g. :class:`ModelConfig`).
    mapping
        Its values; missing keys take the defaults.
    path
        Dotted prefix used in error messages.

    A number field also takes a string that YAML 1.2 reads as a number and a YAML 1.1 loader
    (such as ``yaml.safe_load``) left as a string: ``"1e-3"`` is 0.001.

    Raises
    ------
    ConfigError
        On an unknown key or a value of the wrong type, naming the key.
    """
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {mapping!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    where = f"{path}." if path else ""
    renamed = {k: v for k, v in _RENAMED.get(cls.__name__, {}).items() if k in unknown}
    if renamed:
        detail = ", ".join(f"{where}{k} is now {where}{v}" for k, v in renamed.items())
        raise ConfigError(f"renamed config key(s): {detail}")
    removed = {k: v for k, v in _REMOVED.get(cls.__name__, {}).items() if k in unknown}
    if removed:
        detail = "; ".join(f"{where}{k} was removed: {v}" for k, v in removed.items())
        raise ConfigError(detail)
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"valid keys are {sorted(names)}"
        )
    kwargs = {}
    for name, value in mapping.items():
        kwargs[name] = _convert(value, hints[name], f"{path}.{name}" if path else name)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (tuples become lists), for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))
