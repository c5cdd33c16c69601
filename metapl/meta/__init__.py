"""Meta-learning a general reward model: the bilevel losses, the meta objective and its gradient, meta-train's
episodes and options, and meta-test. The formulation is DESIGN.md's "Bilevel formulation", written from the
paper's description (Jia, arXiv 2402.14760): the paper's public code does not implement its bilevel algorithm.

* `objectives`: the inner losses (projected, on-policy) and the outer agreement loss, r_φ helpers.
* `metagrad`: `MetaConfig` (the bilevel problem and its hypergradient method), `meta_objective` (differentiable
  in φ: its `jax.grad` is the meta-gradient), `meta_gradient`, `meta_loss`, and their versions over a mesh.
* `episodes`, `options`, `parameters`: what meta-training feeds on, its config section, its parameter layout.
* `evaluate`: meta-test, a frozen reward model guiding policy optimisation on held-out domains, in stages.
* `reference_samples`: the reference policy's samples remembered by content, so repeated tests decode them once.
"""

from metapl.meta.episodes import EpisodeBatches, ReferenceSamples, sample_reference, shared_support
from metapl.meta.evaluate import (
    MetaTestConfig, RestoredReward, adapt_and_sample, domain_key, judge, meta_test, pair_accuracy, pair_accuracy_fn,
    render, restore_reward_model, solver_config, summarise,
)
from metapl.meta.metagrad import (
    MetaConfig, domain_keys, domain_problem, meta_gradient, meta_gradient_over_shards, meta_loss, meta_objective,
    meta_objective_over_shards, onpolicy_problem, with_reference_logprobs,
)
from metapl.meta.objectives import (
    RewardFn, RewardFunction, agreement_outer_loss, onpolicy_inner_grad, pair_rewards, policy_logprobs,
    projected_inner_loss, reward_function, reward_pair_loss, sample_rewards,
)
from metapl.meta.options import MetaOptions
from metapl.meta.parameters import meta_parameters
from metapl.meta.tuning import check_tuning_split, tune_solver

__all__ = ["EpisodeBatches", "MetaConfig", "MetaOptions", "MetaTestConfig", "ReferenceSamples", "RestoredReward",
           "RewardFn", "RewardFunction", "adapt_and_sample", "agreement_outer_loss", "check_tuning_split",
           "domain_key", "domain_keys", "domain_problem", "judge", "meta_gradient", "meta_gradient_over_shards",
           "meta_loss", "meta_objective", "meta_objective_over_shards", "meta_parameters", "meta_test",
           "onpolicy_inner_grad", "onpolicy_problem", "pair_accuracy", "pair_accuracy_fn", "pair_rewards",
           "policy_logprobs", "projected_inner_loss", "render", "restore_reward_model", "reward_function",
           "reward_pair_loss", "sample_reference", "sample_rewards", "shared_support", "solver_config", "summarise",
           "tune_solver", "with_reference_logprobs"]
