"""Orbax checkpoints of a run: the train state (params, optimiser state, RNG, counters) and the data position.

    manager = checkpoint_manager(run_dir)
    save_checkpoint(manager, step, state, batches.state_dict())
    state, data_state = restore_checkpoint(manager, manager.latest_step(), like=state)
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from metapl.train.step import TrainState


def checkpoint_manager(run_dir: str | Path, max_to_keep: int = 2):
    """The orbax CheckpointManager of `run_dir/checkpoints` (the newest `max_to_keep` steps are kept)."""
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(Path(run_dir).resolve() / "checkpoints",
                                 options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))


class NonFiniteState(ValueError):
    """A train state with a NaN or infinite parameter or optimiser-state entry, which is never checkpointed."""


def nonfinite_leaves(tree) -> list[str]:
    """The key paths of the floating-point leaves of `tree` holding a NaN or an infinity."""
    bad = jax.tree_util.tree_flatten_with_path(
        jax.tree.map(lambda x: ~jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else False, tree))
    return [jax.tree_util.keystr(path) for path, flag in bad[0] if bool(flag)]


def save_checkpoint(manager, step: int, state: TrainState, data_state: dict) -> None:
    """Write step `step` (state + the data iterator's position) and wait until it is on disk; NonFiniteState (and
    nothing written) if a parameter or optimiser-state entry is not finite."""
    import orbax.checkpoint as ocp

    bad = nonfinite_leaves({"params": state.params, "opt_state": state.opt_state})
    if bad:
        raise NonFiniteState(f"non-finite values in {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; "
                             "not checkpointed")

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


__all__ = ["NonFiniteState", "checkpoint_manager", "nonfinite_leaves", "restore_checkpoint", "save_checkpoint"]
