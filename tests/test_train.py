"""Training loop: logs, grid schedule, checkpoints, exact resumption, clear failures."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import HANG_S, TINY_MODEL, tiny_images

from kaem.config import TrainConfig, from_dict
from kaem.kinds import load_model
from kaem.model import build_model
from kaem.model.prior import QUADRATURE_TOLERANCE, QuadratureWarning
from kaem.training import EpochBatches, NonFiniteLossError, ResumeError, train

MODEL = TINY_MODEL
_images = tiny_images


def _cfg(**kw) -> TrainConfig:
    base = {
        "batch_size": 16,
        "importance": {"n_samples": 12},
        "max_steps": 12,
        "checkpoint_every": 4,
        "grid_update": {"frequency": 3, "decay": 0.5, "samples": 20},
    }
    base.update(kw)
    return from_dict(TrainConfig, base)


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_log_grid_schedule_and_checkpoint(tmp_path: Path) -> None:
    result = train(build_model(MODEL), _images(), _cfg(), tmp_path, device="cpu", progress=False)
    log = pd.read_csv(result.log)
    assert list(log["step"]) == list(range(1, 13))
    assert {"loss", "nll", "ess", "resampled", "mse", "seconds", "grid_updated"} <= set(log)
    assert np.isfinite(log[["loss", "nll", "ess", "mse"]].to_numpy()).all()
    assert list(log["epoch"]) == [0] * 4 + [1] * 4 + [2] * 4  # 64 images, batches of 16
    # First update at step 1; interval 3, then 3 / 0.5 = 6, then 12.
    assert list(log.loc[log["grid_updated"] == 1, "step"]) == [1, 4, 10]
    model = load_model(result.checkpoint)
    torch.testing.assert_close(_state(model), _state(result.model))
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_log_reports_the_quadrature_error_and_warns_when_it_is_coarse(tmp_path) -> None:
    # Smooth energies on 40 nodes: far below the tolerance, logged on every row, no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuadratureWarning)
        result = train(build_model(MODEL), _images(), _cfg(), tmp_path / "smooth", progress=False)
    log = pd.read_csv(result.log)
    error = log.set_index("step")["quadrature_error"].dropna()
    assert list(error.index) == [1, 4, 8, 10, 12]  # grid updates (1, 4, 10), checkpoints (4, 8, 12)
    assert bool((error >= 0).all()) and bool((error < QUADRATURE_TOLERANCE).all())
    # Energies of 12 bumps on 6 nodes: the half rule (3 nodes) moves log Z by far more.
    rough = build_model({**MODEL, "prior": {**MODEL["prior"], "grid_size": 12, "n_nodes": 6}})
    with torch.no_grad():
        rough.prior.kan.coef.normal_(0.0, 3.0, generator=torch.Generator().manual_seed(0))
    with pytest.warns(QuadratureWarning, match=r"between 3 and 6 quadrature nodes.*n_nodes"):
        result = train(rough, _images(), _cfg(max_steps=2), tmp_path / "rough", progress=False)
    assert float(pd.read_csv(result.log)["quadrature_error"].max()) > QUADRATURE_TOLERANCE


def test_resume_gives_identical_parameters(tmp_path: Path) -> None:
    full = train(build_model(MODEL), _images(), _cfg(), tmp_path / "a", progress=False)
    train(build_model(MODEL), _images(), _cfg(max_steps=6), tmp_path / "b", progress=False)
    resumed = train(build_model(MODEL), _images(), _cfg(), tmp_path / "b", progress=False)
    assert resumed.steps == 12
    for key, value in _state(full.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    a, b = pd.read_csv(full.log), pd.read_csv(resumed.log)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    # Resuming with different training settings is refused, naming the setting.
    with pytest.raises(ValueError, match="learning_rate"):
        train(
            build_model(MODEL), _images(), _cfg(learning_rate=0.1), tmp_path / "b", progress=False
        )


SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from kaem.config import TrainConfig, from_dict
    from kaem.model import build_model
    from kaem.training import train
    import json
    model_cfg, train_cfg = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    images = torch.from_numpy(np.load(sys.argv[3]))
    torch.set_num_threads(1)
    model = build_model(model_cfg)
    train(model, images, from_dict(TrainConfig, train_cfg), sys.argv[4], progress=False)
    """
)


def test_killed_run_resumes_to_the_same_result(tmp_path: Path, one_thread) -> None:
    import json

    data = tmp_path / "images.npy"
    np.save(data, _images().numpy())
    train_cfg = {
        "batch_size": 16,
        "importance": {"n_samples": 12},
        "max_steps": 400,
        "checkpoint_every": 3,
        "grid_update": {"frequency": 3, "decay": 0.5, "samples": 20},
    }
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SCRIPT,
            json.dumps(MODEL),
            json.dumps(train_cfg),
            str(data),
            str(out),
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline and proc.poll() is None:
        log = out / "log.csv"
        if (
            (out / "checkpoint.pt").exists()
            and log.exists()
            and len(log.read_text().splitlines()) > 8
        ):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the training run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: mid-step, maybe mid-write
    proc.wait()
    cfg = from_dict(TrainConfig, {**train_cfg, "max_steps": 30})
    killed_at = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < killed_at < 30
    resumed = train(build_model(MODEL), _images(), cfg, out, progress=False)
    full = train(build_model(MODEL), _images(), cfg, tmp_path / "full", progress=False)
    for key, value in _state(full.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    pd.testing.assert_frame_equal(
        pd.read_csv(full.log).drop(columns="seconds"),
        pd.read_csv(resumed.log).drop(columns="seconds"),
    )


def test_non_finite_loss_names_the_step(tmp_path: Path) -> None:
    images = _images().float() / 255
    order_seeded_run = train(
        build_model(MODEL), images, _cfg(max_steps=1), tmp_path / "ok", progress=False
    )
    assert order_seeded_run.steps == 1
    images[:] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"at step 1 \(epoch 0\).*NaN or infinite"):
        train(build_model(MODEL), images, _cfg(), tmp_path / "nan", progress=False)
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    model = build_model(MODEL)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*\(10, 1, 28, 28\)"):
        train(model, torch.zeros(10, 1, 28, 28), _cfg(), tmp_path, progress=False)
    with pytest.raises(ValueError, match="batch_size 16 exceeds the 8"):
        train(model, _images(8), _cfg(), tmp_path, progress=False)
    wavelet = build_model({**MODEL, "prior": {**MODEL["prior"], "basis": "morlet"}})
    with pytest.raises(ValueError, match="grid updating is not defined"):
        train(wavelet, _images(), _cfg(), tmp_path / "w", progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="corrupt"):
        train(model, _images(), _cfg(), tmp_path / "c", progress=False)


def test_epoch_batches_cover_each_image_once_reproducibly() -> None:
    from kaem.training import EpochBatches

    images = torch.arange(23, dtype=torch.uint8).reshape(23, 1, 1, 1)
    batches = EpochBatches(images, 5, seed=3)
    assert batches.per_epoch == 4  # 3 images left over in each epoch
    epoch0 = [batches.batch(s, torch.device("cpu")) for s in range(4)]
    assert {e for e, _ in epoch0} == {0}
    seen = torch.cat([x for _, x in epoch0]).flatten().mul(255).round().long().tolist()
    assert len(seen) == len(set(seen)) == 20 and set(seen) <= set(range(23))
    assert epoch0[0][1].dtype == torch.float32 and float(epoch0[0][1].max()) <= 22 / 255
    again = EpochBatches(images, 5, seed=3)
    assert torch.equal(again.batch(2, torch.device("cpu"))[1], epoch0[2][1])  # no state needed
    assert not torch.equal(batches.order(0), batches.order(1))  # epochs reshuffle
    assert not torch.equal(EpochBatches(images, 5, seed=4).order(0), batches.order(0))
    with pytest.raises(ValueError, match="batch_size 30 exceeds the 23 training images"):
        EpochBatches(images, 30, seed=0)


def test_epoch_order_is_uniform() -> None:
    # Position of image 0 within each of 3,000 epochs of 6 images: uniform.
    from scipy import stats

    from kaem.training import EpochBatches

    batches = EpochBatches(torch.zeros(6, 1, 1, 1), 2, seed=11)
    counts = np.zeros(6)
    for epoch in range(3000):
        counts[int((batches.order(epoch) == 0).nonzero())] += 1
    assert stats.chisquare(counts).pvalue > 1e-3


def test_renamed_config_keys_say_their_new_names() -> None:
    from kaem.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"train.importance_samples is now train.importance.n_samples"
    ):
        from_dict(TrainConfig, {"importance_samples": 10}, "train")
    with pytest.raises(ConfigError, match=r"train.langevin.steps is now train.langevin.n_steps"):
        from_dict(TrainConfig, {"langevin": {"steps": 10}}, "train")
    with pytest.raises(ConfigError, match=r"thermodynamic.chains is now .*thermodynamic.n_chains"):
        from_dict(TrainConfig, {"thermodynamic": {"chains": 2}}, "train")


def test_resume_on_another_device_type_warns_and_continues(tmp_path: Path) -> None:
    # A checkpoint written on a GPU holds a CUDA generator state, which a CPU generator cannot
    # take: the run continues from a fresh seed and says so.
    train(build_model(MODEL), _images(), _cfg(max_steps=4), tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    state["device_type"], state["rng"] = "cuda", torch.zeros(16, dtype=torch.uint8)
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.warns(UserWarning, match="written on a cuda device and resumes on cpu"):
        result = train(build_model(MODEL), _images(), _cfg(max_steps=8), tmp_path, progress=False)
    assert result.steps == 8
    assert list(pd.read_csv(result.log)["step"]) == list(range(1, 9))


def test_compiling_the_generator_keeps_its_results_and_its_state_dict(tmp_path, monkeypatch):
    from kaem.training import compile_model, loop

    model = build_model(MODEL)
    keys = list(model.state_dict())
    z = model.prior.sample(8, torch.Generator().manual_seed(0))
    eager = model.generator(model.prior.generator_input(z))
    assert compile_model(model, backend="eager") == ["generator"]
    assert list(model.state_dict()) == keys  # checkpoints load into an uncompiled model
    torch.testing.assert_close(model.generator(model.prior.generator_input(z)), eager)
    # train.compile: true compiles the model it trains, once; a resumed run may switch it.
    seen = []
    monkeypatch.setattr(loop, "compile_model", lambda m: seen.append(m) or ["generator"])
    first = train(build_model(MODEL), _images(), _cfg(max_steps=2), tmp_path, progress=False)
    again = train(first.model, _images(), _cfg(max_steps=3, compile=True), tmp_path, progress=False)
    assert seen == [again.model] and again.steps == 3


def test_learning_rates_decay_once_an_epoch_and_a_resume_keeps_the_schedule(tmp_path) -> None:
    # 64 images in batches of 16: epochs 0, 1 and 2 of four updates each.
    cfg = _cfg(lr_decay=0.5)
    seen = []
    model = build_model(MODEL)
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Adam, "step", step)
        full = train(model, _images(), cfg, tmp_path / "a", progress=False)
    assert seen == pytest.approx([1e-3] * 4 + [5e-4] * 4 + [2.5e-4] * 4)
    # The rate is a function of the epoch: a run resumed mid-way ends where this one did.
    train(
        build_model(MODEL),
        _images(),
        _cfg(lr_decay=0.5, max_steps=6),
        tmp_path / "b",
        progress=False,
    )
    resumed = train(build_model(MODEL), _images(), cfg, tmp_path / "b", progress=False)
    for key, value in _state(full.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(ValueError, match=r"lr_decay"):
        from_dict(TrainConfig, {"lr_decay": 1.5})


def test_a_non_finite_loss_names_a_checkpoint_that_exists_or_says_there_is_none(tmp_path):
    images = _images().float() / 255
    second = int(EpochBatches(images, 16, seed=0).order(0)[16])  # in the second batch alone
    images[second] = float("nan")
    path = tmp_path / "a" / "checkpoint.pt"
    with pytest.raises(NonFiniteLossError) as failed:
        train(build_model(MODEL), images, _cfg(checkpoint_every=1), path.parent, progress=False)
    assert f"at step 2 (epoch 0); the last good checkpoint is {path}, at step 1" in str(
        failed.value
    )
    assert torch.load(path, weights_only=False)["step"] == 1
    with pytest.raises(NonFiniteLossError) as failed:
        train(build_model(MODEL), images, _cfg(), tmp_path / "b", progress=False)
    assert (
        "at step 2 (epoch 0); no checkpoint has been written yet (the first was to be written "
        "at step 4)" in str(failed.value)
    )
    assert not (tmp_path / "b" / "checkpoint.pt").exists()


def test_a_resume_on_other_images_or_for_fewer_steps_is_refused_and_changes_nothing(tmp_path):
    train(build_model(MODEL), _images(), _cfg(max_steps=4), tmp_path, progress=False)
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ResumeError, match=r"trained on images given in memory \(64 images of"):
        train(build_model(MODEL), _images(seed=1), _cfg(), tmp_path, progress=False)
    with pytest.raises(ResumeError, match=r"train.max_steps=3 asks for fewer steps than the 4"):
        train(build_model(MODEL), _images(), _cfg(max_steps=3), tmp_path, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files


def test_a_time_budget_ends_the_run_and_snapshots_follow_its_training_seconds(tmp_path) -> None:
    from kaem.io import read_checkpoint

    times = [0.2, 0.5]
    cfg = _cfg(max_steps=100_000, max_seconds=1.0, snapshot_seconds=times)
    result = train(build_model(MODEL), _images(), cfg, tmp_path, progress=False)
    log = pd.read_csv(result.log)
    # The first update that reached the budget was the last; the log's seconds add up to it.
    assert 1 <= result.steps < 100_000 and result.steps == int(log["step"].iloc[-1])
    elapsed = log["seconds"].cumsum()
    assert result.seconds == pytest.approx(float(elapsed.iloc[-1]))
    assert result.seconds >= 1.0 and (len(log) == 1 or float(elapsed.iloc[-2]) < 1.0)
    # Each snapshot holds the model after the first update that reached its time.
    assert sorted(result.snapshots) == times
    for t, path in result.snapshots.items():
        state = read_checkpoint(path)
        assert state["elapsed"] >= t and "optimizer" not in state
        at = int(state["step"])
        assert float(elapsed[log["step"] == at].iloc[0]) == pytest.approx(state["elapsed"])
        assert at == 1 or float(elapsed[log["step"] == at - 1].iloc[0]) < t
        assert load_model(path).prior.event_shape == result.model.prior.event_shape
    # A larger budget continues the same run.
    more = _cfg(max_steps=100_000, max_seconds=1.5, snapshot_seconds=times)
    resumed = train(build_model(MODEL), _images(), more, tmp_path, progress=False)
    assert resumed.steps > result.steps and resumed.seconds >= 1.5
