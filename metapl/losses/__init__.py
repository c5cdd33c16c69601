"""Alignment losses as pure functions, each returning `(loss, metrics)`.

Two layers, so that every formula can be checked on its own and the meta level can differentiate through it:

- *array losses* take per-sequence (or per-token) quantities that are already computed — log-probabilities,
  rewards, values — and implement one paper's formula, e.g.
  `dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1)`;
- *model objectives* take `(params, batch, ...)`, run the model (`metapl.models`) to get those quantities, and
  call the array loss; these are what a training step differentiates.

Metrics are a flat dict of scalar arrays (means over the batch), safe to log after `jax.device_get`.

Modules: `preference` (Bradley–Terry reward model, DPO, IPO, conservative DPO, tree reward model),
`policy_gradient` (KL estimators, RLOO, PPO with GAE, adaptive KL), `offline` (filtered MLE, reward-weighted
regression, reward-conditioned SFT), `srpo` (self-improving robust preference optimisation).
"""
