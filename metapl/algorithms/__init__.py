"""Every algorithm metapl can train, registered by name (`metapl train NAME`, `algo: NAME` in a run config).

Importing this package registers them all with `metapl.train.spec`; each family's module holds the algorithms'
typed config sections and set-up functions (`RunConfig -> Setup`):

  preference      rm, dpo, ipo, tree-rm, srpo
  offline         mle-filter, rwr, dt
  policy_gradient rloo, ppo
  meta            meta (the meta-learned general reward model)

    from metapl.algorithms import load_run_config, setup
    cfg = load_run_config("experiments/configs/dpo_synthetic.yaml", ["loss.beta=0.3"])
    s = setup(cfg)                     # trainable, frozen, objective, batches, evaluate
"""

from metapl.algorithms import meta, offline, policy_gradient, preference  # noqa: F401  (they register)
from metapl.algorithms.meta import MetaRun
from metapl.algorithms.offline import DTRun, OfflineOptions, OfflineRun, RWRRun
from metapl.algorithms.policy_gradient import PPOLoss, PPOOptions, PPORun, RLOOLoss, RLOORun
from metapl.algorithms.preference import (
    DPOLoss, DPORun, IPORun, RMLoss, RMRun, SRPOLoss, SRPORun, TreeRMLoss, TreeRMRun,
)
from metapl.train.spec import Setup, algorithm, algorithm_names, load_run_config


def setup(cfg) -> Setup:
    """The registered algorithm `cfg.algo` set up from `cfg`."""
    return algorithm(cfg.algo).setup(cfg)


__all__ = ["DPOLoss", "DPORun", "DTRun", "IPORun", "MetaRun", "OfflineOptions", "OfflineRun", "PPOLoss", "PPOOptions",
           "PPORun", "RLOOLoss", "RLOORun", "RMLoss", "RMRun", "RWRRun", "SRPOLoss", "SRPORun", "TreeRMLoss",
           "TreeRMRun", "algorithm", "algorithm_names", "load_run_config", "setup"]
