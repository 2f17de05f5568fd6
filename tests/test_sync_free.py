"""A training update never waits for the device.

Evidence that needs no GPU:

* every criterion's update (step function, backward pass and the loop's judgement of it) runs
  with the model on the ``meta`` device, where reading a value on the host raises, and it
  copies nothing from the host to the device;
* on the CPU, an update reads nothing on the host;
* a failed update is reported, naming its step, when the loop next looks, and no checkpoint
  holds it.
"""

import collections
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TINY_MODEL, tiny_images
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kaem.config import TrainConfig, from_dict
from kaem.kinds import build
from kaem.model import build_model
from kaem.presets import preset
from kaem.training import NonFiniteLossError, Progress, Updates, build_step, loop, train
from kaem.training.updates import adam

#: Operations that read a tensor's value on the host (a device synchronisation off the CPU).
HOST_READS = ("_local_scalar_dense", "item", "equal", "nonzero", "is_nonzero")

#: id -> (preset, criterion, train settings): every criterion on its paper-sized model.
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "importance": ("nist", "importance", {}),
    "ula": ("svhn", "ula", {"langevin": {"n_steps": 3}}),
    "mala": ("svhn", "ula", {"langevin": {"n_steps": 3, "sampler": "mala"}}),
    "thermodynamic": ("svhn", "thermodynamic", {"langevin": {"n_steps": 4}}),
    "thermodynamic_mala": (
        "svhn",
        "thermodynamic",
        {"langevin": {"n_steps": 4, "sampler": "mala", "step_size": 0.05}},
    ),
    "elbo": ("vae_svhn", "elbo", {}),
    "lebm": ("lebm_svhn", "lebm", {"langevin": {"n_steps": 3}}),
    "ddpm": ("ddpm_svhn", "ddpm", {}),
}


def _setup(case: tuple[str, str, dict[str, Any]], device: str) -> tuple[torch.nn.Module, Any]:
    name, criterion, train_settings = case
    cfg = preset(name)
    train_cfg = from_dict(TrainConfig, {**cfg["train"], "criterion": criterion, **train_settings})
    torch.manual_seed(0)
    return build(cfg["model"], criterion).to(device), train_cfg


class _NoStep(torch.optim.Optimizer):
    """Stands in for Adam on ``meta`` (which has none): changes nothing."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, {})

    def step(self, closure: Any = None) -> None:
        return None


class _HostToDevice(TorchDispatchMode):
    """Records every operation that takes a CPU tensor and returns a ``meta`` one."""

    def __init__(self) -> None:
        super().__init__()
        self.copies: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in inputs) and any(
            t.device.type == "meta" for t in outputs
        ):
            self.copies.append(str(func))
        return out


class _Count(TorchDispatchMode):
    """Counts the operations of the code inside, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", list(CASES))
def test_an_update_of_every_criterion_runs_on_meta(name: str) -> None:
    model, cfg = _setup(CASES[name], "meta")
    x = torch.rand(3, *model.image_shape, device="meta")
    update = Updates(model, _NoStep(model.parameters()), build_step(cfg))
    with _HostToDevice() as watch:
        update(x, None, Progress(2, 10), "at step 2")
    assert watch.copies == []
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.device.type == "meta" for g in grads)


@pytest.mark.parametrize("name", ["importance", "ula", "thermodynamic"])
def test_an_update_on_the_cpu_reads_nothing_on_the_host(name: str) -> None:
    model, cfg = _setup(CASES[name], "cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, *model.image_shape, generator=g)
    device = torch.device("cpu")
    optimizer = adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, device=device)
    update = Updates(model, optimizer, build_step(cfg))
    with _Count() as count:
        update(x, g, Progress(2, 100), "at step 2")
    assert {op: n for op, n in count.ops.items() if op in HOST_READS} == {}
    assert math.isfinite(update.settle()["loss"])


def test_a_failed_update_is_reported_with_its_step_and_never_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {
        "batch_size": 16,
        "importance": {"n_samples": 12},
        "log_every": 5,
        "checkpoint_every": 10,
        "grid_update": {"frequency": 3, "samples": 20},
    }
    clean = train(
        build_model(TINY_MODEL),
        tiny_images(),
        from_dict(TrainConfig, {**settings, "max_steps": 1}),
        tmp_path / "clean",
        progress=False,
    )
    real = loop.build_step

    def failing_at_2(cfg: TrainConfig) -> Any:
        step = real(cfg)

        def fn(model, x, generator, progress):
            result = step(model, x, generator, progress)
            loss = result.loss * math.nan if progress.step == 2 else result.loss
            return result._replace(loss=loss)

        return fn

    monkeypatch.setattr(loop, "build_step", failing_at_2)
    model = build_model(TINY_MODEL)
    cfg = from_dict(TrainConfig, {**settings, "max_steps": 10})
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 2 \(epoch 0\)"):
        train(model, tiny_images(), cfg, tmp_path / "failed", progress=False)
    # Reported before the grid update of step 4, the first time the loop had to look: no
    # checkpoint holds the updates of steps 2 and 3, and the log stops before them.
    assert not (tmp_path / "failed" / "checkpoint.pt").exists()
    assert clean.steps == 1


def test_training_images_are_kept_on_the_device_and_cut_there(monkeypatch):
    from kaem.training import loop

    images = torch.randint(0, 256, (10, 1, 2, 2), dtype=torch.uint8)
    meta = torch.device("meta")
    assert loop._images_for(images, torch.device("cpu")) is images
    on_device = loop._images_for(images, meta)
    assert on_device.device == meta and on_device.dtype == torch.uint8
    batches = loop.EpochBatches(on_device, 3, seed=0)
    epoch, x = batches.batch(4, meta)  # a batch of the second epoch
    assert epoch == 1 and x.device == meta and x.shape == (3, 1, 2, 2) and x.dtype == torch.float32
    assert batches.order(epoch).device == meta  # one host-to-device copy an epoch, not a batch
    # The permutation is drawn on the host, so every device trains on the same batches.
    host = loop.EpochBatches(images, 3, seed=0)
    g = torch.Generator().manual_seed(loop._seed(0, 1, 1))
    assert torch.equal(host.order(1), torch.randperm(10, generator=g))
    # A set too large for the device stays on the host.
    monkeypatch.setattr(loop, "DEVICE_DATA_BYTES", 8)
    assert loop._images_for(images, meta).device.type == "cpu"
