"""One of two processes of tests/parallel/test_multiprocess.py: joins the other through jax.distributed on
loopback (2 CPU devices each, 4 in all), runs one DPO step and one sampling call on a data 2 x fsdp 2 mesh
spanning both, and process 0 writes the loss, the gathered parameters and the sampled tokens to OUT.npz.

    python tests/parallel/two_process_worker.py PROCESS_ID PORT OUT
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))


def main(pid: int, port: int, out: str) -> None:
    from metapl.parallel import MeshConfig, initialize

    initialize(MeshConfig(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid))
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from metapl.parallel import make_mesh, shard_step
    from tests.parallel.test_multiprocess import one_step_setup, sample_check

    assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.device_count())
    step, state, frozen, batch = one_step_setup()
    mesh = make_mesh(MeshConfig(data=2, fsdp=2))
    fn, state, frozen = shard_step(step, state, frozen, mesh)
    state, metrics = fn(state, frozen, batch)
    params = multihost_utils.process_allgather(state.params, tiled=True)
    loss = float(np.asarray(metrics["loss"].addressable_data(0)))  # replicated: every process holds it
    sampled = sample_check(mesh)  # every process receives every row
    if pid == 0:
        leaves = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(out, loss=loss, sampled=sampled, **leaves)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
