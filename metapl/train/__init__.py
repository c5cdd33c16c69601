"""Training: one jit-compiled step over any objective (`step`), and the loops built on it."""

from metapl.train.step import (
    OptimConfig, TrainState, accumulate_gradients, init_state, learning_rate_schedule, make_optimizer,
    make_train_step,
)

__all__ = ["OptimConfig", "TrainState", "accumulate_gradients", "init_state", "learning_rate_schedule",
           "make_optimizer", "make_train_step"]
