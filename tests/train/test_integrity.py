"""Run integrity: a resumed run logs every step once, bad settings are refused before anything is written, and
no non-finite value reaches the parameters or a checkpoint."""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.cli import main
from metapl.config import ConfigError
from metapl.runs import RunError, prepare_run_dir, read_metrics, train
from metapl.train.checkpoints import NonFiniteState, checkpoint_manager, save_checkpoint
from metapl.train.spec import RunConfig, Setup
from metapl.train.step import OptimConfig, init_state, make_optimizer, make_train_step

TINY = ["algo=dpo", "model.hidden_size=16", "model.num_layers=1", "data.synthetic.num_domains=30",
        "data.synthetic.num_heldout=20", "data.synthetic.pairs_per_domain=16", "log_every=1", "eval_every=5"]


def _train(run_dir, overrides, resume=False):
    cfg = prepare_run_dir(run_dir, None, TINY + overrides, resume)
    return train(run_dir, cfg, resume=resume, progress=False)


def _tb_events(run_dir):
    """(step, kind) of every event in the run's TensorBoard files (TFRecord: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted((run_dir / "tb").iterdir()):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (n,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + n])
            at += 12 + n + 4
            kind = "start" if event.HasField("session_log") else event.WhichOneof("what")
            events.append((event.step, kind))
    return events


def test_a_resumed_run_logs_every_step_once_after_a_kill_past_its_checkpoint(tmp_path):
    straight = tmp_path / "straight"
    _train(straight, ["steps=20", "checkpoint_every=10"])
    killed = tmp_path / "killed"
    _train(killed, ["steps=13", "checkpoint_every=10"])
    # a kill at step 13, before that step's checkpoint was written, and in the middle of a metrics row
    checkpoint_manager(killed).delete(13)
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"step": 14, "kind": "tra')
    _train(killed, ["steps=20"], resume=True)
    rows, expected = read_metrics(killed), read_metrics(straight)
    assert [(r["step"], r["kind"]) for r in rows] == [(r["step"], r["kind"]) for r in expected]
    for a, b in zip(rows, expected):
        assert a.get("loss") == pytest.approx(b.get("loss"), rel=1e-6)
    aside = (killed / "discarded" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in aside[:-1]] == [11, 12, 13, 13]  # train 11-13, the final eval
    assert aside[-1] == '{"step": 14, "kind": "tra'
    # TensorBoard is told to hide what the first writer logged past step 10
    assert (11, "start") in _tb_events(killed)


def test_resuming_a_run_without_a_checkpoint_logs_step_0_once(tmp_path):
    run = tmp_path / "r"
    _train(run, ["steps=3", "checkpoint_every=10"])
    checkpoint_manager(run).delete(3)
    _train(run, ["steps=3"], resume=True)
    assert [r["step"] for r in read_metrics(run, "eval")] == [0, 3]
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3]


def test_a_test_result_of_a_lost_checkpoint_is_set_aside_on_resume(tmp_path):
    run = tmp_path / "r"
    _train(run, ["steps=3", "checkpoint_every=2"])
    (run / "meta_test_heldout.json").write_text(json.dumps({"checkpoint_step": 3}))
    (run / "meta_test_heldout.md").write_text("step 3")
    (run / "policy_test_heldout.json").write_text(json.dumps({"checkpoint_step": 2}))
    checkpoint_manager(run).delete(3)
    _train(run, ["steps=4"], resume=True)
    assert not (run / "meta_test_heldout.json").exists() and (run / "discarded" / "meta_test_heldout.md").exists()
    assert (run / "policy_test_heldout.json").exists()  # step 2 is the checkpoint the run resumed from


@pytest.mark.parametrize("override, words", [
    ("checkpoint_every=0", "checkpoint_every: must be >= 1, got 0"),
    ("log_every=0", "log_every: must be >= 1, got 0"),
    ("data.batch_size=0", "data.batch_size: must be >= 1, got 0"),
    ("steps=-3", "steps: must be >= 1, got -3"),
    ("optim.learning_rate=nan", "optim.learning_rate: expected a finite number, got nan"),
    ("data.synthetic.label_noise=nan", "data.synthetic.label_noise: expected a finite number, got nan"),
    ("loss.beta=.inf", "loss.beta: expected a finite number, got inf"),
    ("optim.b2=1", "optim.b2: must be >= 0 and < 1, got 1"),
])
def test_a_bad_setting_is_exit_2_naming_its_key_before_anything_is_written(tmp_path, capsys, override, words):
    run = tmp_path / "r"
    assert main(["train", "dpo", "--run-dir", str(run), "--no-progress", override]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not run.exists()


def test_every_bad_setting_is_named_when_a_meta_run_is_configured(tmp_path):
    with pytest.raises(ConfigError, match=r"meta.feedback_budget.d0: must be >= 1, got 0"):
        prepare_run_dir(tmp_path / "m", None, ["algo=meta", "meta.feedback_budget={d0: 0, d1: 4}"], False)
    with pytest.raises(ConfigError, match=r"data.synthetic.prompt_words\[0\]: must be >= 1, got 0"):
        prepare_run_dir(tmp_path / "m", None, ["data.synthetic.prompt_words=[0, 3]"], False)
    assert not (tmp_path / "m").exists()


def test_a_run_dir_that_is_a_file_is_exit_2(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("not a run")
    assert main(["train", "dpo", "--run-dir", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "names a file, not a directory" in err and err.count("\n") == 1, err
    assert path.read_text() == "not a run"


def test_a_config_built_in_python_is_checked_when_the_run_starts(tmp_path):
    cfg = RunConfig(optim=OptimConfig(learning_rate=float("nan")))
    with pytest.raises(ConfigError, match="optim.learning_rate: expected a finite number"):
        train(tmp_path / "r", cfg, progress=False)


def test_a_finite_gradient_with_a_nan_update_is_skipped():
    def objective(p, frozen, batch):
        return jnp.sum(p["w"] ** 2), {}

    opt = make_optimizer(OptimConfig(learning_rate=float("nan")))  # a finite loss and gradient, a NaN update
    step = make_train_step(objective, opt)
    state = init_state({"w": jnp.ones(3)}, opt, jax.random.key(0))
    state, m = step(state, None, {})
    assert int(m["skipped"]) == 1 and np.isfinite(float(m["loss"]))
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.ones(3))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.opt_state))


def test_a_non_finite_state_is_never_checkpointed(tmp_path):
    opt = make_optimizer(OptimConfig(learning_rate=0.1))
    state = init_state({"w": jnp.array([1.0, jnp.nan])}, opt, jax.random.key(0))
    manager = checkpoint_manager(tmp_path)
    with pytest.raises(NonFiniteState, match=r"\['params'\]\['w'\]"):
        save_checkpoint(manager, 1, state, {})
    assert manager.latest_step() is None


class _Batches:
    def __next__(self):
        return {"x": jnp.float32(np.nan)}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_the_guard_says_when_no_checkpoint_exists_yet(tmp_path):
    setup = Setup(trainable={"w": jnp.ones(2)}, frozen=None,
                  objective=lambda t, f, b: (jnp.sum(t["w"]) * b["x"], {}), batches=_Batches(),
                  evaluate=lambda t, f: {})
    cfg = RunConfig(steps=20, checkpoint_every=10, optim=OptimConfig(max_nonfinite_steps=3))
    (tmp_path / "r").mkdir()
    with pytest.raises(RunError, match=r"3 consecutive non-finite steps at step 3; stopping \(no checkpoint was "
                                       r"written yet\)"):
        train(tmp_path / "r", cfg, progress=False, setup=setup)


@pytest.mark.parametrize("args, words", [
    (["data", "build", "synthetic_domains", "--label-noise", "nan"], "label_noise: expected a finite number, got nan"),
    (["data", "build", "synthetic_domains", "--shift", "inf"], "shift: expected a finite number, got inf"),
    (["meta-test", "--run", "no-such-run", "--beta", "nan"], "beta: expected a finite number, got nan"),
    (["meta-test", "--run", "no-such-run", "--lr=-0.1"], "lr: must be >= 0, got -0.1"),
])
def test_settings_given_as_flags_are_checked_too(tmp_path, capsys, args, words):
    extra = ["--data-dir", str(tmp_path / "data")] if args[0] == "data" else []
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()
