"""The ``kaem`` command: ``prepare-data``, ``train``, ``evaluate``, ``figures``, ``fetch-weights``
and ``bench``.

Every expected failure (a bad option or setting, a missing or unreadable file, a run that
cannot resume) prints one line, ``kaem: error: ...``, that names the fault, and exits with 2
for a usage error (options and settings) or 1 for a runtime one; ``--debug`` shows the
traceback instead. Unexpected exceptions keep theirs. A failed command leaves a run folder
as it was: ``config.yaml`` is written only once every check has passed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["UsageError", "main", "resolve_run_config"]

EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
_PACKAGE = Path(__file__).resolve().parent


class UsageError(Exception):
    """A bad command-line option or value: ``kaem`` exits with status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (:class:`UsageError`) instead of usage + exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _number(kind: type, low: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` above ``low`` (``strict``) or at least ``low``."""
    what = {int: "an integer", float: "a number"}[kind]
    bound = f"greater than {low:g}" if strict else f"at least {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    return parse


#: argparse types of counts, seeds and positive numbers.
positive_int = _number(int, 1, strict=False)
_seed = _number(int, 0, strict=False)
_positive = _number(float, 0.0, strict=True)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text or text.startswith("="):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.split("."), yaml.safe_load(value)


def resolve_run_config(
    preset_name: str | None, config_file: str | None, overrides: Sequence[tuple[list[str], Any]]
) -> dict[str, Any]:
    """A run's ``{model, train}`` mapping: preset, then config file, then ``--set`` overrides."""
    from kaem.config import ConfigError
    from kaem.presets import merge, preset

    file_cfg: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UsageError(f"--config {path}: no such file")
        try:
            file_cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(
                f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}"
            ) from None
        if not isinstance(file_cfg, dict):
            raise ConfigError(f"{path}: expected a mapping with model and train sections")
        preset_name = file_cfg.pop("preset", preset_name)
    cfg = merge(preset(preset_name) if preset_name else {}, file_cfg)
    for keys, value in overrides:
        node = cfg
        for depth, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(f"--set {'.'.join(keys)}: {where} is not a section")
        node[keys[-1]] = value
    unknown = set(cfg) - {"model", "train"}
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
    from kaem.io import atomic_write_text
    from kaem.kinds import build
    from kaem.training import check_resume, check_setup, train

    # Every check comes before the run folder is touched.
    cfg = resolve_run_config(args.preset, args.config, args.set or [])
    train_cfg = from_dict(TrainConfig, cfg.get("train"), "train")
    model = build(cfg.get("model"), train_cfg.criterion, seed=train_cfg.seed)
    check_setup(model, train_cfg)
    device = _device(args.device)
    data = _data_file(args.data)
    resolved = {"model": to_dict(model.config), "train": to_dict(train_cfg)}
    out = Path(args.out)
    step = check_resume(out / "checkpoint.pt", resolved["train"], resolved["model"])
    images, _ = load_images(data, "train")
    shape = tuple(resolved["model"]["image_shape"])
    if tuple(images.shape[1:]) != shape:
        raise UsageError(
            f"--data {data}: images of shape {tuple(images.shape[1:])}, but model.image_shape "
            f"is {shape}; choose the preset of this dataset or --set model.image_shape"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(yaml.safe_dump(resolved, sort_keys=False), out / "config.yaml")
    if step is not None:
        _status(f"kaem: resuming {out} from step {step} ({out / 'checkpoint.pt'})")
    result = train(model, torch.from_numpy(images), train_cfg, out, device=device)
    print(f"trained {result.steps} steps: {result.checkpoint}")


def _checkpoint_of(run: str) -> Path:
    path = Path(run) / "checkpoint.pt"
    if not path.is_file():
        raise UsageError(f"{run}: no checkpoint.pt; train the run first (`kaem train --out {run}`)")
    return path


def _figures(args: argparse.Namespace) -> None:
    from kaem.workflow.plots import figures_for_run

    _checkpoint_of(args.run)
    for name, path in figures_for_run(args.run, args.out, seed=args.seed).items():
        print(f"{name}: {path}")


def _evaluate(args: argparse.Namespace) -> None:
    import torch

    from kaem.data import load_images
    from kaem.inference.evidence import check_estimable, evaluate_log_evidence
    from kaem.io import atomic_write_text
    from kaem.kinds import load_model

    checkpoint = _checkpoint_of(args.run)
    data = _data_file(args.data)
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
    _warn_if_estimates_disagree(result)
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


def _fetch_weights(args: argparse.Namespace) -> None:
    from kaem.features import fetch_inception_weights

    print(fetch_inception_weights(args.cache_dir))


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
    p.add_argument("--seed", type=_seed, default=0, help="seed of the split")
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
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for PyTorch")
    p.set_defaults(func=_train)

    p = add("figures", help="figures of a trained run")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", default=None, help="output folder (default RUN/figures)")
    p.add_argument("--seed", type=_seed, default=0)
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
    p.add_argument("--step-size", type=_positive, default=0.005, help="steppingstone: ULA step")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=_evaluate)

    p = add("fetch-weights", help="download the FID Inception network for offline use")
    p.add_argument("--cache-dir", default=None, help="default ~/.cache/kaem")
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
    from kaem.samplers import NonFiniteError
    from kaem.training import NonFiniteLossError, ResumeError

    if isinstance(exc, UsageError | ConfigError):
        return EXIT_USAGE
    if isinstance(exc, OSError | DataError | ResumeError | NonFiniteError | NonFiniteLossError):
        return EXIT_RUNTIME
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
        from kaem.memory import keep_freed_memory

        keep_freed_memory()  # repeated steps reuse their memory instead of faulting it in
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
