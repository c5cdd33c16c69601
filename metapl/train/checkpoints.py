"""Orbax checkpoints of a run: the train state (params, optimiser state, RNG, counters) and the data position.

    manager = checkpoint_manager(run_dir)
    save_checkpoint(manager, step, state, batches.state_dict())
    state, data_state = restore_checkpoint(manager, manager.latest_step(), like=state)
"""

from __future__ import annotations

from pathlib import Path

import jax

from metapl.train.step import TrainState


def checkpoint_manager(run_dir: str | Path, max_to_keep: int = 2):
    """The orbax CheckpointManager of `run_dir/checkpoints` (the newest `max_to_keep` steps are kept)."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(Path(run_dir).resolve() / "checkpoints",
                                 options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))


def save_checkpoint(manager, step: int, state: TrainState, data_state: dict) -> None:
    """Write step `step` (state + the data iterator's position) and wait until it is on disk."""
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=ocp.args.JsonSave(data_state)), force=True)
    manager.wait_until_finished()


def restore_checkpoint(manager, step: int, like: TrainState) -> tuple[TrainState, dict]:
    """(state, data position) of step `step`, restored onto the shapes, dtypes and shardings of `like`."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                        data=ocp.args.JsonRestore()))
    return TrainState(*out["state"]), out["data"]


__all__ = ["checkpoint_manager", "restore_checkpoint", "save_checkpoint"]
