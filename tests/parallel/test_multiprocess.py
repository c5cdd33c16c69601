"""Two local processes joined by `jax.distributed.initialize` on loopback run one sharded DPO step and one
sharded sampling call (a data 2 x fsdp 2 mesh over both processes' devices) and agree with the same on one device
in this process."""

import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

WORKER = Path(__file__).with_name("two_process_worker.py")


def one_step_setup():
    """(un-jitted DPO step, state, frozen, first batch) of a tiny synthetic run, identical in every process."""
    from metapl.runs import load_run_config, setup as setup_algorithm
    from metapl.train import init_state, make_optimizer, make_train_step
    from tests.parallel.test_sharded_steps import COMMON

    cfg = load_run_config(None, ["algo=dpo", *COMMON])
    setup = setup_algorithm(cfg)
    optimizer = make_optimizer(cfg.optim)
    state = init_state(setup.trainable, optimizer, jax.random.PRNGKey(cfg.seed))
    return make_train_step(setup.objective, optimizer, jit=False), state, setup.frozen, next(setup.batches)


def sample_check(mesh=None) -> np.ndarray:
    """Tokens [8, 5] sampled at temperature 1 from a tiny model for 8 prompts (2 rows per device on a mesh)."""
    from metapl.models import SamplingConfig, generate, init_params, tiny

    config = tiny("llama")
    params = init_params(config, jax.random.key(0))
    tokens = np.random.default_rng(0).integers(1, config.vocab_size, size=(8, 4)).astype(np.int32)
    out = generate(params, config, tokens, np.ones_like(tokens, bool), jax.random.key(1),
                   SamplingConfig(max_new_tokens=5, temperature=1.0), mesh=mesh)
    return np.asarray(out.tokens)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(tmp_path):
    out, port = tmp_path / "two.npz", free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(pid), str(port), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in (0, 1)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=600)[0])
        finally:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n\n".join(logs)[-4000:]
    got = np.load(out)

    step, state, frozen, batch = one_step_setup()
    state, metrics = jax.jit(step)(state, frozen, batch)
    np.testing.assert_allclose(got["loss"], float(metrics["loss"]), rtol=1e-5)
    np.testing.assert_array_equal(got["sampled"], sample_check())
    want = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    assert sorted(want) == sorted(k for k in got.files if k not in ("loss", "sampled"))
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
