"""Training: the loop (:func:`train`), the step of each criterion, checkpoints and the log."""

from kaem.training.loop import (
    CRITERIA,
    NonFiniteLossError,
    StepContext,
    TrainResult,
    train,
    update_grids,
)

__all__ = ["CRITERIA", "NonFiniteLossError", "StepContext", "TrainResult", "train", "update_grids"]
