"""App. A's cost curves: sweeps measured, tabulated and drawn, and their bad input refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from kaem.bench.harness import RATIOS
from kaem.bench.harness import main as bench_main
from kaem.bench.sweeps import SWEEPS, run_sweep
from kaem.pipeline.costs import plot_sweep, sweep_table


@pytest.mark.long  # every series of a sweep, each in its own process: 20-30 s on two cores
def test_a_sweep_measures_every_series_at_every_value_with_its_spread():
    out = run_sweep("prior_samples", "cpu", repeats=2, values=[4, 1], progress=False)
    series = list(SWEEPS["prior_samples"].series)
    assert [(p["series"], p["value"]) for p in out["points"]] == [
        (s, v) for s in series for v in (1, 4)
    ]
    for p in out["points"]:
        assert 0 < p["seconds_min"] <= p["seconds"] <= p["seconds_max"], p
        assert p["peak_mib"] >= 0 and p["repeats"] >= 1
    assert out["reference"] is None and out["device"] == "cpu" and out["log_x"]
    assert ["Langevin, 60 steps (81)", "ITS, SVHN mixture prior (81)"] in out["ratios"]


def test_a_sweep_of_the_latent_width_changes_the_models_width(monkeypatch):
    from kaem.bench import sweeps

    built = []
    real = sweeps.training_step_case

    def spy(name, model_settings=None, **train):
        built.append(model_settings)
        return real(name, model_settings=model_settings, **train)

    monkeypatch.setattr(sweeps, "training_step_case", spy)
    out = run_sweep("is_step_nz", "cpu", repeats=1, values=[6, 3], progress=False)
    assert [p["value"] for p in out["points"]] == [3, 6]
    assert [m["prior"]["widths"][1] for m in built] == [3, 6]
    assert [m["generator"]["hidden_widths"] for m in built] == [[6], [12]]


def _payload() -> dict:
    def point(series, value, seconds):
        return {
            "series": series,
            "value": value,
            "seconds": seconds,
            "seconds_min": seconds * 0.9,
            "seconds_max": seconds * 1.2,
            "peak_mib": 10.0 * value,
            "repeats": 3,
        }

    return {
        "sweep": "thermo_nt",
        "title": "a sweep",
        "x_label": "temperatures N_t",
        "log_x": False,
        "notes": "",
        "ratios": [["slow", "fast"]],
        "points": [point("fast", 2, 1.0), point("fast", 4, 2.0), point("slow", 2, 5.0)],
        "reference": {"series": "VAE step", **point("VAE step", 0, 0.5)},
        "device_name": "cpu",
        "threads": 2,
    }


def test_a_sweep_table_lists_the_points_then_the_speed_ups_and_the_reference_ratios():
    df = sweep_table(_payload())
    points = df[df["seconds"].notna() & (df["series"] != "VAE step")]
    assert list(zip(points["series"], points["value"], strict=True)) == [
        ("fast", 2),
        ("fast", 4),
        ("slow", 2),
    ]
    speed = df.set_index("series")["speed-up"]
    assert speed["slow / fast"] == pytest.approx(5.0)  # only where both were measured
    assert (df["series"] == "slow / fast").sum() == 1
    ref = df[df["series"].str.endswith("/ VAE step")]
    assert list(ref["speed-up"]) == pytest.approx([2.0, 4.0, 10.0])
    assert df.set_index("series").loc["VAE step", "seconds"] == 0.5


def test_a_sweep_figure_is_drawn(tmp_path):
    path = plot_sweep(_payload(), tmp_path / "sweep.png")
    image = imread(path)[..., :3]
    assert image.shape[0] > 200 and np.std(image) > 0.05


def test_the_sweep_command_writes_its_json_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "s.json"
    bench_main(
        ["--sweep", "is_step_nz", "--values", "2", "3", "--repeats", "1", "--json", str(out)]
    )
    data = json.loads(out.read_text())
    assert data["sweep"] == "is_step_nz" and [p["value"] for p in data["points"]] == [2, 3]
    assert "IS step @ 3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_main(["--values", "2", "3"])
    assert "--values needs --sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_main(["--sweep", "nosuch"])
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown sweep 'nosuch'"):
        run_sweep("nosuch")
    assert math.isfinite(data["points"][0]["seconds"])


def test_the_small_batch_pair_draws_its_own_batch_whatever_samples_asks():
    from kaem.bench.cases import BENCHMARKS, SMALL_BATCH

    g = torch.Generator().manual_seed(0)
    case = BENCHMARKS[f"its_prior_{SMALL_BATCH}"].build(torch.device("cpu"), 7, g)
    assert case.setup is not None  # a parameter change before every call: tables are cold
    assert tuple(case.call().shape) == (SMALL_BATCH, 81, 40)
    assert (f"langevin_prior_81_{SMALL_BATCH}", f"its_prior_{SMALL_BATCH}") in RATIOS


def test_a_quick_call_is_warmed_up_longer_than_a_slow_one():
    import time

    from kaem.bench.harness import measure

    calls = {"quick": 0, "slow": 0}

    def quick():
        calls["quick"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.3)

    measure("quick", quick, repeats=3)
    measure("slow", slow, repeats=1)
    # The memory call, the warm-up (20 for the quick call, 1 for the slow), the timed repeats.
    assert calls == {"quick": 1 + 20 + 3, "slow": 1 + 1 + 1}


def test_a_chain_too_long_for_the_budget_is_timed_in_part_and_scaled(monkeypatch):
    """A chain of 100 steps of 2 ms: within the budget (images x steps) it is timed whole;
    beyond it, its first steps are timed and the time scaled by the step count."""
    import time

    from kaem.bench import sweeps
    from kaem.bench.cases import Case

    ran = []

    def chain(n):
        def build(device, n_images, g):
            def partial(k):
                ran.append((n_images, k))
                time.sleep(0.002 * k)

            return Case(lambda: partial(100), steps=100, partial=partial)

        return build

    fake = sweeps.Sweep("fake", "a chain", "images", (1, 10), {"chain": chain}, samples=None)
    monkeypatch.setitem(sweeps.SWEEPS, "fake", fake)
    out = run_sweep("fake", repeats=1, progress=False, timed_image_steps=20)
    one, ten = out["points"]
    assert (one["timed_steps"], one["scale"], ten["timed_steps"], ten["scale"]) == (20, 5, 2, 50)
    assert {k for n, k in ran} == {20, 2} and out["timed_image_steps"] == 20
    for p in (one, ten):  # 100 steps of 2 ms, whichever part was timed
        assert 0.19 < p["seconds_min"] <= p["seconds"] <= p["seconds_max"] < 0.6, p
    ran.clear()
    whole = run_sweep("fake", repeats=1, values=[1, 2], progress=False, timed_image_steps=200)
    assert [p["scale"] for p in whole["points"]] == [1.0, 1.0] and {k for n, k in ran} == {100}
    with pytest.raises(ValueError, match="timed_image_steps must be at least 1"):
        run_sweep("fake", timed_image_steps=-1)


def _generation_payload() -> dict:
    from kaem.bench.sweeps import DDPM_GEN, DDPM_STEP, KAEM_GEN, VAE_STEP

    def point(series, value, seconds, **chain):
        return {
            "series": series,
            "value": value,
            "seconds": seconds,
            "seconds_min": seconds,
            "seconds_max": seconds,
            "peak_mib": 1.0,
            "repeats": 2,
            **chain,
        }

    sweep = SWEEPS["generation"]
    scaled = {"steps": 1000, "timed_steps": 1, "scale": 1000.0}
    return {
        "sweep": "generation",
        "title": sweep.title,
        "x_label": sweep.x_label,
        "log_x": True,
        "per_sample": True,
        "notes": "",
        "ratios": [list(r) for r in sweep.ratios],
        "extra_ratios": [list(r) for r in sweep.extra_ratios],
        "claims": dict(sweep.claims),
        "points": [
            point(KAEM_GEN, 1, 0.002),
            point(KAEM_GEN, 100, 0.02),
            point(DDPM_GEN, 1, 10.0, steps=1000, timed_steps=50, scale=20.0),
            point(DDPM_GEN, 100, 500.0, **scaled),
        ],
        "reference": None,
        "extras": [point(VAE_STEP, 1, 0.02), point(DDPM_STEP, 1, 1.0)],
        "device_name": "cpu",
        "threads": 2,
    }


def test_the_generation_table_gives_time_per_image_how_it_was_timed_and_the_claims():
    from kaem.bench.sweeps import DDPM_GEN, DDPM_STEP, KAEM_GEN, VAE_STEP

    df = sweep_table(_generation_payload())
    rows = df.set_index(["series", "value"])
    assert rows.loc[(KAEM_GEN, 100), "seconds per sample"] == pytest.approx(2e-4)
    assert rows.loc[(DDPM_GEN, 100), "seconds per sample"] == pytest.approx(5.0)
    assert rows.loc[(DDPM_GEN, 1), "timing"] == "timed 50 of 1000 steps, scaled x20"
    assert rows.loc[(DDPM_GEN, 100), "timing"] == "timed 1 of 1000 steps, scaled x1000"
    assert rows.loc[(KAEM_GEN, 1), "timing"] == ""
    ratio = rows.loc[(f"{DDPM_GEN} / {KAEM_GEN}", 1)]
    assert ratio["speed-up"] == pytest.approx(5000.0) and "~700x" in ratio["authors' claim"]
    by = df.set_index("series")
    assert by.loc[f"{DDPM_STEP} / {VAE_STEP}", "speed-up"] == pytest.approx(50.0)
    assert by.loc[DDPM_STEP, "seconds"] == 1.0 and by.loc[KAEM_GEN, "authors' claim"].iloc[0]
    # The other sweeps' tables keep their columns.
    assert "timing" not in sweep_table(_payload()) and "authors' claim" not in sweep_table(
        _payload()
    )


def test_a_generation_figure_has_its_training_steps_panel(tmp_path):
    path = plot_sweep(_generation_payload(), tmp_path / "generation.png")
    image = imread(path)[..., :3]
    assert image.shape[1] > 1.3 * image.shape[0] and np.std(image) > 0.05
