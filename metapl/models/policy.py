"""What trains and what stays frozen: one place for the LoRA-or-full-weights split of a policy and a reward model.

A **policy** is a language model whose weights split into a trainable tree and a frozen tree:

| `config.lora` | trainable           | frozen                                      | reference policy π_ref       |
|---------------|---------------------|---------------------------------------------|------------------------------|
| set           | LoRA adapters       | the base weights                            | the base (adapters dropped)  |
| None          | all weights         | a copy of the initial weights, or None      | that copy (the initial θ)    |

Every algorithm, the meta objectives and meta-test go through `Policy`, so "is this LoRA?" is asked here only.

A **reward model** is a scalar head on a backbone (`metapl.models.heads`): with full weights φ is the whole head
model and nothing is frozen; with LoRA φ = {"lora": adapters, "head": the scalar head} over the frozen head model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from metapl.models.config import ModelConfig
from metapl.models.heads import init_head_params, reward
from metapl.models.logprobs import sequence_logprobs
from metapl.models.lora import init_lora
from metapl.models.shared_prefix import continuation_rewards, response_logprobs

Params = Any


@dataclasses.dataclass(frozen=True)
class Policy:
    """The trainable/frozen split of a language-model policy with config `config` (see the module docstring)."""

    config: ModelConfig

    @property
    def uses_lora(self) -> bool:
        return self.config.lora is not None

    @property
    def base_config(self) -> ModelConfig:
        """The config of the frozen base / reference model (no adapters)."""
        return self.config.replace(lora=None)

    def init(self, params: Params, adapter_key: jax.Array, *, keep_reference: bool = True) -> tuple[Params, Params]:
        """(trainable, frozen) starting at π_ref = `params`: fresh adapters (B = 0) over `params`, or `params`
        themselves with a frozen copy kept as the reference (`keep_reference`; else frozen is None)."""
        if self.uses_lora:
            return init_lora(self.config, adapter_key), params
        return params, (jax.tree.map(jnp.copy, params) if keep_reference else None)

    def weights(self, trainable: Params, frozen: Params | None) -> tuple[Params, Params | None]:
        """(params, lora) of the current policy, as the model functions take them."""
        return (frozen, trainable) if self.uses_lora else (trainable, None)

    def logprobs(self, trainable: Params, frozen: Params | None, tokens: jax.Array, attention_mask: jax.Array,
                 response_mask: jax.Array) -> jax.Array:
        """Summed response log-probs [B] of tokens [B, T] under the current policy."""
        params, lora = self.weights(trainable, frozen)
        return sequence_logprobs(params, self.config, tokens, response_mask, attention_mask=attention_mask,
                                 lora=lora)[1]

    def continuation_logprobs(self, trainable: Params, frozen: Params | None, prompt_tokens: jax.Array,
                              prompt_mask: jax.Array, response_tokens: jax.Array, response_mask: jax.Array
                              ) -> jax.Array:
        """Summed log-probs [B, K] of K continuations of each prompt [B, P] (`models.shared_prefix` layout)."""
        params, lora = self.weights(trainable, frozen)
        return response_logprobs(params, self.config, prompt_tokens, prompt_mask, response_tokens, response_mask,
                                 lora=lora)


@dataclasses.dataclass(frozen=True)
class RewardModel:
    """The trainable/frozen split of a scalar-head reward model on a backbone with config `config`."""

    config: ModelConfig

    @property
    def uses_lora(self) -> bool:
        return self.config.lora is not None

    def init(self, backbone: Params, head_key: jax.Array, adapter_key: jax.Array) -> tuple[Params, Params | None]:
        """(φ, frozen): a fresh scalar head on `backbone`, plus fresh adapters over the frozen head model (LoRA)."""
        head_model = init_head_params(self.config, head_key, backbone=backbone)
        if not self.uses_lora:
            return head_model, None
        return {"lora": init_lora(self.config, adapter_key), "head": head_model["head"]}, head_model

    def score(self, phi: Params, frozen: Params | None, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """r_φ [B] of tokens [B, T], read at each row's last real token."""
        if frozen is None:
            return reward(phi, self.config, tokens, attention_mask)
        return reward(dict(frozen, head=phi["head"]), self.config, tokens, attention_mask, lora=phi["lora"])

    def score_continuations(self, phi: Params, frozen: Params | None, prompt_tokens: jax.Array,
                            prompt_mask: jax.Array, response_tokens: jax.Array, response_mask: jax.Array
                            ) -> jax.Array:
        """r_φ [B, K] of K continuations of each prompt [B, P] (`models.shared_prefix` layout)."""
        args = (prompt_tokens, prompt_mask, response_tokens, response_mask)
        if frozen is None:
            return continuation_rewards(phi, self.config, *args)
        return continuation_rewards(dict(frozen, head=phi["head"]), self.config, *args, lora=phi["lora"])


__all__ = ["Policy", "RewardModel"]
