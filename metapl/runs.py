"""Runs, with every built-in algorithm registered: configure, train, resume, read back and meta-test.

    from metapl.runs import prepare_run_dir, train, meta_test, MetaTestConfig
    cfg = prepare_run_dir(Path("runs/rm"), "experiments/configs/rm_synthetic.yaml", ["steps=100"], resume=False)
    train("runs/rm", cfg)
    meta_test("runs/rm", "heldout", MetaTestConfig(prompts=8))
    tune_solver(["runs/rm"], [{"beta": 0.25}, {"beta": 0.5}])   # meta-test settings chosen on validation prompts
    policy_test("runs/dpo", "heldout")                          # a trained policy on the same prompts and keys

The functions live in `metapl.train` and `metapl.meta`; this module imports `metapl.algorithms` so that a run
config of any built-in algorithm can be parsed (the algorithms register their config types when imported).
"""

import metapl.algorithms  # noqa: F401  (registers every built-in algorithm)
from metapl.algorithms import algorithm_names, setup
from metapl.algorithms.policy_test import policy_test
from metapl.meta.evaluate import MetaTestConfig, meta_test
from metapl.meta.tuning import tune_solver
from metapl.train.run import RunError, prepare_run_dir, read_metrics, read_run_config, train
from metapl.train.spec import load_run_config

__all__ = ["MetaTestConfig", "RunError", "algorithm_names", "load_run_config", "meta_test", "policy_test",
           "prepare_run_dir", "read_metrics", "read_run_config", "setup", "train", "tune_solver"]
