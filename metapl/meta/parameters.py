"""The parameter layout of a reward-model run (`meta` or `rm`), so meta-test rebuilds exactly what a run trained.

φ, the reward model (`RewardModel`): a head model (full weights), or {"lora", "head"} over the frozen head model.
The policy's θ₀, the reference (`Policy`): the base weights themselves (full weights, no frozen base), or fresh
adapters (B = 0) over the frozen base.
"""

from __future__ import annotations

from typing import Any

from metapl.keys import stream_key
from metapl.models.config import ModelConfig
from metapl.models.policy import Policy, RewardModel


def meta_parameters(seed: int, config: ModelConfig, params: Any) -> tuple[Any, dict]:
    """(φ, frozen) at initialisation: frozen = {"theta0": θ₀, "base": the policy's frozen base or None, "rm": the
    reward model's frozen part or None}. `params` are the pretrained (or random) backbone weights."""
    phi, rm_frozen = RewardModel(config).init(params, stream_key(seed, "reward_head"), stream_key(seed, "adapters"))
    theta0, base = Policy(config).init(params, stream_key(seed, "meta_policy_adapters"), keep_reference=False)
    return phi, {"theta0": theta0, "base": base, "rm": rm_frozen}


__all__ = ["meta_parameters"]
