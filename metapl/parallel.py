"""Many devices: a mesh from config, sharding rules for parameter paths, batch sharding, multi-host set-up.

The mesh has three named axes, any of them of size 1:

    data    replicas of the parameters, each on its own slice of the batch;
    fsdp    parameters, gradients and optimiser state split across devices (ZeRO-3 style), batch split too;
    tensor  the hidden dimensions of attention heads, MLP and vocabulary split (Megatron style).

Parameters get a `PartitionSpec` from their path and shape (`param_spec`): a kernel `[in, out]` whose output
feeds the residual stream (attention `o`, MLP `down`) is split `("tensor", "fsdp")`, one that reads from it
(`q`, `k`, `v`, `gate`, `up`) `("fsdp", "tensor")`; embeddings `[V, D]` `("tensor", "fsdp")`; LoRA factors
follow their kernel's `in`/`out` split on their non-rank dimension; norms, biases of the residual width and
reward heads' biases are replicated; the stacked layer axis is never split. A dimension its mesh axes do not
divide stays whole (replicated along those axes). Optimiser state follows its parameters.

Computation under these shardings is plain `jax.jit` with explicit in/out shardings: XLA's SPMD partitioner
inserts the all-gathers, reduce-scatters and all-reduces, so a sharded step computes the same numbers as the
single-device step up to float reassociation.

Multi-host: call `initialize(cfg)` before any other JAX call in every process (the CLI does; under a multi-task
SLURM step or on a multi-host TPU slice JAX finds the coordinator itself). `global_batch` makes the global batch
from the whole batch every process holds, or from each process's own rows (`process_local=True`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from metapl.config import ConfigError, number

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # the batch's leading dimension is split over both

# Kernels that read the residual stream ([D, out]) and those that write it ([in, D]).
_READS = {"q", "k", "v", "gate", "up", "head"}
_WRITES = {"o", "down"}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Axis sizes (their product = devices used; 1 x 1 x 1 = one device, no sharding) and, for multi-process
    runs, how to reach the coordinator (None: let `jax.distributed.initialize` read the environment)."""

    data: int = number(1, ge=1)
    fsdp: int = number(1, ge=1)
    tensor: int = number(1, ge=1)
    coordinator_address: str | None = None
    num_processes: int | None = number(None, ge=1)
    process_id: int | None = number(None, ge=0)

    def __post_init__(self):
        for name in AXES:
            if getattr(self, name) < 1:
                raise ValueError(f"mesh.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def sharded(self) -> bool:
        return self.size > 1

    def __str__(self) -> str:
        return " x ".join(f"{name} {getattr(self, name)}" for name in AXES)  # e.g. "data 2 x fsdp 4 x tensor 1"


def initialize(cfg: MeshConfig) -> None:
    """`jax.distributed.initialize` for a multi-process run: from the config's coordinator fields, or from the
    environment (METAPL_COORDINATOR / METAPL_NUM_PROCESSES / METAPL_PROCESS_ID, else JAX's own detection of
    SLURM and TPU pods). A no-op for a single process with nothing configured."""
    address = cfg.coordinator_address or os.environ.get("METAPL_COORDINATOR")
    num = cfg.num_processes or _env_int("METAPL_NUM_PROCESSES")
    pid = cfg.process_id if cfg.process_id is not None else _env_int("METAPL_PROCESS_ID")
    if address is None and num is None and not _cluster_environment():
        return
    # CPU devices of different processes talk through gloo (GPUs and TPUs use their own collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value is None else int(value)


def _cluster_environment() -> bool:
    """A launcher started several processes of this run: a multi-task SLURM step or a multi-host TPU slice."""
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over the first data·fsdp·tensor devices (all processes' devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if cfg.size > len(devices):
        raise ConfigError(f"mesh: data x fsdp x tensor = {cfg.data} x {cfg.fsdp} x {cfg.tensor} = {cfg.size} "
                          f"devices, but only {len(devices)} are visible")
    return Mesh(np.asarray(devices[: cfg.size], dtype=object).reshape(cfg.data, cfg.fsdp, cfg.tensor), AXES)


def run_mesh(cfg: MeshConfig) -> Mesh | None:
    """The mesh of a run's config, or None for a one-device run (no sharding anywhere)."""
    return make_mesh(cfg) if cfg.sharded else None


def _names(path) -> list[str]:
    out = []
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", None)))
        out.append(str(key))
    return out


def _rule(names: list[str], ndim: int) -> tuple:
    """The partition of the last (non-layer) dimensions of one parameter, before divisibility checks."""
    leaf = names[-1]
    owner = names[-2] if len(names) > 1 else ""
    if leaf == "embedding":  # token embedding / tied or untied LM head [V, D]; learned positions [T, D]
        return (None, "fsdp") if owner == "pos_embed" else ("tensor", "fsdp")
    if leaf == "kernel" and owner in _READS:
        return ("fsdp", None) if owner == "head" else ("fsdp", "tensor")
    if leaf == "kernel" and owner in _WRITES:
        return ("tensor", "fsdp")
    if leaf == "a" and owner in _READS | _WRITES:  # LoRA A [in, r]
        return ("fsdp" if owner in _READS else "tensor", None)
    if leaf == "b" and owner in _READS | _WRITES:  # LoRA B [r, out]
        return (None, "tensor" if owner in _READS else "fsdp")
    if leaf == "bias" and owner in _READS and owner != "head":  # q/k/v/up biases live on the split output
        return ("tensor",)
    return (None,) * min(ndim, 1)  # norms, residual-width biases, scalars: replicated


def param_spec(path, shape: tuple[int, ...], mesh: Mesh) -> P:
    """The PartitionSpec of one parameter (see the module docstring); dimensions an axis does not divide stay
    whole."""
    names = _names(path)
    inner = _rule(names, len(shape))
    spec = [None] * (len(shape) - len(inner)) + list(inner)  # leading stacked-layer axis: never split
    spec = spec[-len(shape):] if shape else []
    for i, axis in enumerate(spec):
        if axis is not None and shape[i] % mesh.shape[axis]:
            spec[i] = None
    return P(*spec)


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """NamedSharding per leaf of a parameter tree (base weights, LoRA adapters or reward-model params)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, param_spec(path, np.shape(x), mesh)), params)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_ways(mesh: Mesh | MeshConfig) -> int:
    """How many pieces a batch's leading dimension is split into: data x fsdp."""
    shape = mesh.shape if isinstance(mesh, Mesh) else dataclasses.asdict(mesh)
    return int(np.prod([shape[a] for a in BATCH]))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp; the rest whole."""
    return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def batch_shardings(batch: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda x: batch_sharding(mesh, np.ndim(x)) if np.ndim(x) else replicated(mesh), batch)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """Shardings of a `TrainState`: params by the rules; an optimiser-state leaf whose path ends with a
    parameter's path and has its shape (Adam's moments) as that parameter; every other leaf (counters, the RNG
    key, scalars) replicated."""
    params = param_shardings(state.params, mesh)
    by_path = {tuple(_names(path)): (np.shape(x), s) for (path, x), s in
               zip(jax.tree_util.tree_flatten_with_path(state.params)[0], jax.tree.leaves(params))}

    def opt_leaf(path, x):
        names = tuple(_names(path))
        for k in range(len(names)):  # optax nests the parameter tree under its own keys
            shape, s = by_path.get(names[k:], (None, None))
            if s is not None and shape == np.shape(x):
                return s
        return replicated(mesh)

    rep = lambda tree: jax.tree.map(lambda _: replicated(mesh), tree)  # noqa: E731
    return type(state)(step=rep(state.step), params=params,
                       opt_state=jax.tree_util.tree_map_with_path(opt_leaf, state.opt_state),
                       nonfinite_run=rep(state.nonfinite_run), skipped=rep(state.skipped), rng=rep(state.rng))


def global_batch(batch: Any, mesh: Mesh, *, process_local: bool = False) -> Any:
    """One global array per leaf with the batch sharding.

    By default every process holds the whole batch (e.g. the same seeded iterator everywhere) and each device
    takes its rows from it. With `process_local=True` each process holds only its own rows (its loader reads a
    disjoint part of the data), in process order, and they are assembled into the global batch. On one process
    both are a sharded `device_put`."""
    shardings = batch_shardings(batch, mesh)
    if process_local and jax.process_count() > 1:
        return jax.tree.map(lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x)), batch,
                            shardings)
    return place(batch, shardings)


def place(tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)` that also works across processes: there every process holds the whole
    value of each leaf (host data, or an array on its own devices) and contributes its devices' pieces; a leaf
    that already has its target sharding is kept as it is."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x, s):
        if isinstance(x, jax.Array) and x.sharding == s:
            return x
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda i: host[i])

    return jax.tree.map(one, tree, shardings)


def to_host(tree: Any) -> Any:
    """The whole value of every leaf as numpy on every process (gathered across processes when needed)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def check_batch(batch: Any, mesh: Mesh) -> None:
    """A clear error when a batch's leading dimension does not split over data x fsdp."""
    ways = batch_ways(mesh)
    for path, x in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if np.ndim(x) and np.shape(x)[0] % ways:
            raise ConfigError(f"batch field {jax.tree_util.keystr(path)}: leading dimension {np.shape(x)[0]} does "
                              f"not split over mesh data x fsdp = {ways}; choose a batch size divisible by it")


def shard_step(step: Any, state: Any, frozen: Any, mesh: Mesh) -> tuple[Any, Any, Any]:
    """(sharded step, state placed on the mesh, frozen params placed on the mesh) for an un-jitted
    `step(state, frozen, batch) -> (state, metrics)` (`make_train_step(..., jit=False)`).

    The sharded step takes a host batch: it places it with `global_batch` and runs the step under `jax.jit` with
    explicit in/out shardings (the state by `state_shardings`, donated; frozen weights by the rules; the batch
    split over data x fsdp; metrics replicated), compiled on the first batch of each structure."""
    state_sh = state_shardings(state, mesh)
    frozen_sh = param_shardings(frozen, mesh)
    compiled = {}

    def sharded(state, frozen, batch):
        key = (jax.tree.structure(batch), tuple(np.ndim(x) for x in jax.tree.leaves(batch)))
        if key not in compiled:
            check_batch(batch, mesh)
            compiled[key] = jax.jit(step, in_shardings=(state_sh, frozen_sh, batch_shardings(batch, mesh)),
                                    out_shardings=(state_sh, replicated(mesh)), donate_argnums=(0,))
        return compiled[key](state, frozen, global_batch(batch, mesh))

    return sharded, place(state, state_sh), place(frozen, frozen_sh)
