"""Alignment losses as pure functions, each returning `(loss, metrics)`.

Two layers, so that every formula can be checked on its own and the meta level can differentiate through it:

- *array losses* take per-sequence (or per-token) quantities that are already computed — log-probabilities,
  rewards, values — and implement one paper's formula, e.g.
  `dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1)`;
- *model objectives* take `(params, batch, ...)`, run the model (`metapl.models`) to get those quantities, and
  call the array loss; these are what a training step differentiates. Their knobs (β, α, clip ranges, ...) have
  no defaults here: the caller passes them (the training setups, from the run config).

Metrics are a flat dict of scalar arrays (means over the batch), safe to log after `jax.device_get`.
Losses build no data and sample nothing: their batches come from `metapl.data` (e.g. `metapl.data.sft_arrays`,
`metapl.data.srpo`).

Modules: `preference` (Bradley–Terry reward model, DPO, IPO, conservative DPO, tree reward model),
`policy_gradient` (KL estimators, RLOO, PPO with GAE, adaptive KL), `offline` (filtered MLE, reward-weighted
regression, reward-conditioned SFT), `srpo` (self-improving robust preference optimisation). Their public
names are all importable from `metapl.losses`.
"""

from metapl.losses.offline import filter_weights, nll_loss, rwr_weights, sft_objective
from metapl.losses.policy_gradient import (
    adaptive_kl_update,
    gae,
    kl_penalty,
    leave_one_out_advantages,
    policy_and_values,
    ppo_objective,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_loss,
    rloo_objective,
    token_rewards,
)
from metapl.losses.preference import (
    bradley_terry_loss,
    dpo_loss,
    dpo_objective,
    implicit_margin,
    ipo_loss,
    is_shared_prefix,
    pair_logprobs,
    pair_rewards,
    reference_logprobs,
    rm_objective,
    tree_rm_objective,
)
from metapl.losses.srpo import srpo_logprobs, srpo_loss, srpo_objective, srpo_reference_logprobs

__all__ = [
    # offline
    "filter_weights", "nll_loss", "rwr_weights", "sft_objective",
    # policy_gradient
    "adaptive_kl_update", "gae", "kl_penalty", "leave_one_out_advantages", "policy_and_values", "ppo_objective",
    "ppo_policy_loss", "ppo_value_loss", "rloo_loss", "rloo_objective", "token_rewards",
    # preference
    "bradley_terry_loss", "dpo_loss", "dpo_objective", "implicit_margin", "ipo_loss", "is_shared_prefix",
    "pair_logprobs", "pair_rewards", "reference_logprobs", "rm_objective", "tree_rm_objective",
    # srpo
    "srpo_logprobs", "srpo_loss", "srpo_objective", "srpo_reference_logprobs",
]
