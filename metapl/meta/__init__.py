"""Meta-learning a general reward model: the bilevel losses, the per-episode meta-gradient, meta-train and
meta-test. The formulation is DESIGN.md's "Bilevel formulation", written from the paper's description (Jia,
arXiv 2402.14760): the paper's public code does not implement its bilevel algorithm.
"""

from metapl.meta.metagrad import (
    MetaConfig, domain_keys, domain_problem, meta_gradient, meta_gradient_over_shards, meta_loss,
    with_reference_logprobs,
)
from metapl.meta.objectives import (
    agreement_outer_loss, policy_logprobs, projected_inner_loss, reward_function, reward_pair_loss,
    sample_rewards,
)

__all__ = ["MetaConfig", "agreement_outer_loss", "domain_keys", "domain_problem", "meta_gradient",
           "meta_gradient_over_shards", "meta_loss", "policy_logprobs", "projected_inner_loss", "reward_function",
           "reward_pair_loss", "sample_rewards", "with_reference_logprobs"]
