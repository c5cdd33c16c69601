"""Training: one jit-compiled step over any objective (`step`), run configs and the algorithm registry (`spec`),
the loop with checkpoints, metrics and resume (`run`, `checkpoints`), and the batch iterators it consumes
(`batches`). The algorithms themselves register from `metapl.algorithms`."""

from metapl.train.checkpoints import checkpoint_manager, restore_checkpoint, save_checkpoint
from metapl.train.run import MetricsWriter, RunError, prepare_run_dir, read_metrics, read_run_config, train
from metapl.train.spec import (
    Algorithm, RunConfig, Setup, algorithm, algorithm_names, build_model_and_benchmark, load_run_config, register,
)
from metapl.train.step import (
    OptimConfig, TrainState, accumulate_gradients, init_state, learning_rate_schedule, make_optimizer,
    make_train_step,
)

__all__ = ["Algorithm", "MetricsWriter", "OptimConfig", "RunConfig", "RunError", "Setup", "TrainState",
           "accumulate_gradients", "algorithm", "algorithm_names", "build_model_and_benchmark", "checkpoint_manager",
           "init_state", "learning_rate_schedule", "load_run_config", "make_optimizer", "make_train_step",
           "prepare_run_dir", "read_metrics", "read_run_config", "register", "restore_checkpoint", "save_checkpoint",
           "train"]
