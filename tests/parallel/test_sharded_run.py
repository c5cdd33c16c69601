"""`metapl train` on a mesh of simulated CPU devices: a DPO run on data 2 x fsdp 2 completes, resumes from its
checkpoint onto fsdp 4 (checkpoints hold global arrays, not a mesh layout), and ends where a one-device run of
the same steps ends."""

import jax
import numpy as np

from metapl.cli import main
from metapl.runs import read_metrics
from metapl.train.checkpoints import checkpoint_manager

TINY = ["data.synthetic.num_domains=12", "data.synthetic.num_heldout=4", "data.synthetic.pairs_per_domain=16",
        "model.hidden_size=32", "model.num_layers=1", "data.batch_size=8", "optim.learning_rate=1e-2",
        "optim.eps=1e-4", "data.eval_prompts=8", "log_every=1", "eval_every=1000", "checkpoint_every=2",
        "--no-progress"]


def test_cli_run_on_a_mesh_resumes_onto_another_mesh(tmp_path, capsys):
    sharded, plain = tmp_path / "sharded", tmp_path / "plain"
    assert main(["train", "dpo", "--run-dir", str(sharded), *TINY, "steps=4", "mesh.data=2", "mesh.fsdp=2"]) == 0
    assert "mesh: data 2 x fsdp 2 x tensor 1 (4 of 8 devices)" in capsys.readouterr().err
    assert main(["train", "dpo", "--run-dir", str(sharded), "--resume", *TINY, "steps=6", "mesh.data=1",
                 "mesh.fsdp=4"]) == 0
    err = capsys.readouterr().err
    assert "mesh: data 1 x fsdp 4 x tensor 1" in err and "resumed from step 4" in err
    assert main(["train", "dpo", "--run-dir", str(plain), *TINY, "steps=6"]) == 0
    a = {r["step"]: r["loss"] for r in read_metrics(sharded, "train")}
    b = {r["step"]: r["loss"] for r in read_metrics(plain, "train")}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([a[s] for s in sorted(a)], [b[s] for s in sorted(b)], rtol=1e-4)
    restore = lambda d: checkpoint_manager(d).restore(6)["state"]  # noqa: E731
    for x, y in zip(jax.tree.leaves(restore(sharded)), jax.tree.leaves(restore(plain))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_a_mesh_larger_than_the_devices_or_an_undivisible_batch_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "dpo", "--run-dir", str(tmp_path / "a"), *TINY, "steps=1", "mesh.data=16"]) == 2
    assert "16 devices, but only 8 are visible" in capsys.readouterr().err
    assert main(["train", "dpo", "--run-dir", str(tmp_path / "b"), *TINY, "steps=1", "mesh.data=8",
                 "data.batch_size=4"]) == 2
    assert "does not split over mesh data x fsdp = 8" in capsys.readouterr().err
    assert main(["train", "dpo", "--run-dir", str(tmp_path / "c"), *TINY, "steps=1", "mesh.tensor=0"]) == 2
    assert "mesh.tensor: must be >= 1, got 0" in capsys.readouterr().err
