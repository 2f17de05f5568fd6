"""The ``kaem`` command as a user meets it: one line per fault, nothing changed by a failure."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kaem.bench.sweeps import SWEEPS
from kaem.cli import _warn_if_estimates_disagree, main
from kaem.config import TrainConfig, from_dict, to_dict
from kaem.data import prepare_dataset
from kaem.presets import preset
from kaem.training import Checkpoint


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """A prepared tiny dataset and a run trained on it to the end (three updates)."""
    root = tmp_path_factory.mktemp("cli")
    data = prepare_dataset("tiny", root / "tiny.h5", n_train=100, n_test=20, progress=False)
    run = root / "run"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(run)]
    assert main([*args, "--set", "train.max_steps=3", "--threads", "1"]) == 0
    return {"root": root, "data": data, "run": run}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


TRAIN = ["train", "--preset", "tiny", "--data", "{data}", "--out", "{run}"]

#: (arguments, exit status, words the one-line message must hold)
BAD_INPUTS = [
    ([*TRAIN, "--set", "train.batch_size=0"], 2, ["train.batch_size", "at least 1"]),
    ([*TRAIN, "--set", "train.learning_rate=-0.01"], 2, ["train.learning_rate", "positive"]),
    ([*TRAIN, "--threads", "0"], 2, ["--threads", "at least 1"]),
    ([*TRAIN, "--device", "nosuch"], 2, ["--device", "'nosuch'", "cpu"]),
    ([*TRAIN, "--set", "train.nosuch=1"], 2, ["train.nosuch", "valid keys"]),
    ([*TRAIN, "--set", "train.criterion=nosuch"], 2, ["train.criterion", "'nosuch'"]),
    ([*TRAIN, "--set", "epochs"], 2, ["--set", "KEY=VALUE"]),
    ([*TRAIN, "--set", "train.importance.ess_threshold=2"], 2, ["ess_threshold", "[0, 1]"]),
    ([*TRAIN[:-1], "{root}/new", "--preset", "nist"], 2, ["model.image_shape", "(1, 8, 8)"]),
    (["train", "--preset", "nosuch", "--data", "{data}", "--out", "{run}"], 2, ["--preset"]),
    (
        ["train", "--config", "{root}/nosuch.yaml", "--data", "{data}", "--out", "{run}"],
        2,
        ["--config", "nosuch.yaml", "no such file"],
    ),
    (
        ["train", "--config", "{root}/broken.yaml", "--data", "{data}", "--out", "{run}"],
        2,
        ["broken.yaml", "YAML"],
    ),
    (
        ["train", "--preset", "tiny", "--data", "{root}/nosuch.h5", "--out", "{run}"],
        2,
        ["--data", "nosuch.h5", "kaem prepare-data"],
    ),
    ([*TRAIN, "--set", "train.learning_rate=0.1"], 1, ["train.learning_rate", "0.002 -> 0.1"]),
    ([*TRAIN, "--set", "model.prior.widths=[3,3]"], 1, ["model.prior.widths", "[4, 8] -> [3, 3]"]),
    ([*TRAIN[:-1], "{root}/new", "--set", "train.criterion=ula"], 1, ["shared_uniforms"]),
    (
        ["train", "--preset", "tiny", "--data", "{data}", "--out", "{root}/file.txt/run"],
        1,
        ["file.txt"],
    ),
    (["evaluate", "{run}", "--data", "{data}", "--n-images", "0"], 2, ["--n-images", "at least 1"]),
    (["evaluate", "{run}", "--data", "{data}", "--samples", "0"], 2, ["--samples", "at least 1"]),
    (["evaluate", "{run}", "--data", "{data}", "--step-size", "-1"], 2, ["--step-size"]),
    (["evaluate", "{root}", "--data", "{data}"], 2, ["checkpoint.pt", "kaem train"]),
    (["figures", "{root}/nosuch"], 2, ["nosuch", "checkpoint.pt"]),
    (["prepare-data", "nosuch", "{root}/x.h5"], 2, ["name", "'nosuch'", "mnist"]),
    (
        ["prepare-data", "svhn", "{root}/svhn.h5", "--source", "{root}/nosuch.mat"],
        1,
        ["nosuch.mat", "source"],
    ),
    (["prepare-data", "tiny", "{root}/x.h5", "--n-train", "0"], 2, ["--n-train", "at least 1"]),
    (["bench", "--only", "nosuch"], 2, ["--only", "'nosuch'", "its_prior"]),
    (["nosuch"], 2, ["'nosuch'", "train"]),
]


@pytest.mark.parametrize(
    "args,status,words", BAD_INPUTS, ids=[f"{a[0]}-{w[0]}" for a, _, w in BAD_INPUTS]
)
def test_a_bad_input_is_one_line_naming_it_and_changes_nothing(
    finished, capsys, args, status, words
):
    root = finished["root"]
    (root / "broken.yaml").write_text("train: [unclosed\n")
    (root / "file.txt").write_text("not a folder\n")
    before = _digest(finished["run"])
    argv = [a.format(**{k: str(v) for k, v in finished.items()}) for a in args]
    assert main(argv) == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("kaem: error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _digest(finished["run"]) == before
    assert not (root / "new").exists()  # a refused run leaves no folder behind


def test_debug_shows_the_traceback(finished) -> None:
    args = ["train", "--preset", "tiny", "--data", str(finished["data"]), "--out", "x"]
    with pytest.raises(Exception, match=r"train\.batch_size"):
        main([*args, "--set", "train.batch_size=0", "--debug"])


def test_the_installed_command_exits_with_the_status(finished) -> None:
    """The console script, not just main(): status 2, one line on stderr, no traceback."""
    kaem = Path(sys.executable).with_name("kaem")
    proc = subprocess.run(
        [str(kaem), "evaluate", str(finished["run"]), "--data", str(finished["data"]),
         "--samples", "0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "kaem: error: argument --samples: must be at least 1, got '0' (see `kaem evaluate --help`)"
    ]


def test_the_resolved_config_holds_every_setting(finished) -> None:
    written = yaml.safe_load((finished["run"] / "config.yaml").read_text())
    train = from_dict(TrainConfig, preset("tiny", {"train": {"max_steps": 3}})["train"])
    assert written["train"] == to_dict(train)  # defaults included
    assert written["model"]["prior"]["quadrature"] == "gauss_legendre"
    assert written["model"]["generator"]["output_activation"] == "sigmoid"


def test_resuming_says_from_which_step(finished, capsys) -> None:
    run = finished["root"] / "resumed"
    args = ["train", "--preset", "tiny", "--data", str(finished["data"]), "--out", str(run)]
    assert main([*args, "--set", "train.max_steps=2"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert main([*args, "--set", "train.max_steps=4"]) == 0  # max_steps may change
    err = capsys.readouterr().err
    assert f"kaem: resuming {run} from step 2" in err
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 4


def test_evaluate_shows_progress_and_writes_its_json(finished, capsys) -> None:
    out = finished["root"] / "evidence.json"
    args = ["evaluate", str(finished["run"]), "--data", str(finished["data"])]
    assert main([*args, "--n-images", "4", "--samples", "3000", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "log p(x)" in err and "3/3" in err  # the bar counted the three 1,000-draw chunks
    assert '"importance"' in out.read_text()


def test_disagreeing_estimates_are_flagged_with_what_to_raise(capsys) -> None:
    agree = {
        "importance": {"mean": -10.0, "stderr": 0.5},
        "steppingstone": {"mean": -10.6, "stderr": 0.5},
    }
    _warn_if_estimates_disagree(agree)
    assert capsys.readouterr().err == ""
    apart = {
        "importance": {"mean": -10.0, "stderr": 0.1},
        "steppingstone": {"mean": -12.0, "stderr": 0.1},
    }
    _warn_if_estimates_disagree(apart)
    err = capsys.readouterr().err
    assert "kaem: warning:" in err and "--samples" in err and "--temps" in err


def test_prepare_data_names_its_source_and_leaves_no_empty_download_folder(tmp_path, capsys):
    assert main(["prepare-data", "tiny", str(tmp_path / "d" / "tiny.h5"), "--n-train", "50"]) == 0
    assert "from sklearn.datasets.load_digits" in capsys.readouterr().out
    assert main(["prepare-data", "svhn", str(tmp_path / "s" / "svhn.h5"), "--offline"]) == 1
    assert "--source PATH" in capsys.readouterr().err
    assert not (tmp_path / "s" / "downloads").exists()


def test_bench_passes_its_options_through(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    assert "--only" in capsys.readouterr().out


def test_a_checkpoint_that_cannot_be_written_names_its_path(tmp_path, monkeypatch) -> None:
    import kaem.training.checkpoint as ckpt

    def refuse(obj, path):
        raise PermissionError(13, "Permission denied", str(path) + ".tmp")

    monkeypatch.setattr(ckpt, "atomic_torch_save", refuse)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", model, opt, torch.Generator(), None, {})
    with pytest.raises(OSError, match=r"cannot write the checkpoint .*checkpoint\.pt: Permission"):
        checkpoint.save(1, 0.0)


def test_the_gpu_check_runs_every_check_and_writes_its_report(tmp_path) -> None:
    """The one-call device check, shrunk (``--quick``) onto this machine's CPU."""
    from kaem.bench.gpu_check import main as gpu_check

    out = tmp_path / "report.json"
    assert gpu_check(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["failed"] == [] and report["environment"]["device"] == "cpu"
    criteria = ("importance", "ula", "thermodynamic", "elbo", "lebm", "ddpm")
    expected = {f"step_{c}" for c in criteria}
    others = {"prior_paths", "resume_on_cpu", "training", "benchmarks", "generation_sweep"}
    assert expected | others <= set(report["checks"])
    sweep = report["checks"]["generation_sweep"]
    assert {p["series"] for p in sweep["points"]} == set(SWEEPS["generation"].series)
    assert all(p["value"] == 1 for p in sweep["points"]) and len(sweep["extras"]) == 5
    assert (
        report["checks"]["training"]["finite"] and report["checks"]["resume_on_cpu"]["steps"] == 6
    )
    assert report["checks"]["benchmarks"]["ratios"]["langevin_prior_81/its_prior"] > 0
