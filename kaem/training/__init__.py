"""Training: step functions per criterion, the loop, checkpoints, the CSV log, grid updates."""

from kaem.training.checkpoint import Checkpoint, ResumeError, check_resume, check_steps, data_record
from kaem.training.grids import GridUpdates
from kaem.training.log import CSVLog
from kaem.training.loop import (
    EpochBatches,
    TrainResult,
    check_setup,
    compile_model,
    planned_steps,
    resolve_device,
    snapshot_name,
    train,
)
from kaem.training.steps import (
    CRITERIA,
    Progress,
    StepFn,
    StepResult,
    build_step,
    elbo_step,
    importance_step,
    langevin_step,
    lebm_step,
    thermodynamic_step,
)
from kaem.training.updates import NonFiniteLossError, Updates, adam

__all__ = [
    "CRITERIA",
    "CSVLog",
    "Checkpoint",
    "EpochBatches",
    "GridUpdates",
    "NonFiniteLossError",
    "Progress",
    "ResumeError",
    "StepFn",
    "StepResult",
    "TrainResult",
    "Updates",
    "adam",
    "build_step",
    "check_resume",
    "check_setup",
    "check_steps",
    "compile_model",
    "data_record",
    "elbo_step",
    "importance_step",
    "langevin_step",
    "lebm_step",
    "planned_steps",
    "resolve_device",
    "snapshot_name",
    "thermodynamic_step",
    "train",
]
