"""The model of a run, as configured: a pretrained checkpoint or a small random Llama, with LoRA or not.

    spec = ModelSpec(pretrained="smollm2-135m", lora_rank=8)
    config, params, tokenizer = build_model(spec, vocab_size=None, key=jax.random.PRNGKey(0))
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from metapl.config import number
from metapl.models.config import LoraConfig, ModelConfig, llama
from metapl.models.transformer import init_params


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The policy / reward backbone: a pretrained model (`pretrained`: a short name, a Hugging Face directory or
    a .gguf file) or a small random Llama of the given sizes."""

    pretrained: str | None = None
    hidden_size: int = number(32, ge=1)
    num_layers: int = number(2, ge=1)
    num_heads: int = number(4, ge=1)
    num_kv_heads: int = number(2, ge=1)
    intermediate_size: int = number(64, ge=1)
    lora_rank: int = number(0, ge=0)  # 0: train all weights; > 0: train LoRA adapters only (the reference is the base)
    lora_alpha: float = number(16.0, gt=0)
    lora_targets: tuple[str, ...] = ("q", "v")
    dtype: str = "float32"
    remat: str = "dots"  # what the backward keeps per layer: "dots", "full" or "none" (see ModelConfig.remat)
    # Score the continuations of one prompt in one packed row, the prompt computed once (models.shared_prefix);
    # false: one row per prompt + continuation, the prompt computed for each.
    shared_prefix: bool = True

    @property
    def lora(self) -> LoraConfig | None:
        if not self.lora_rank:
            return None
        return LoraConfig(rank=self.lora_rank, alpha=self.lora_alpha, targets=tuple(self.lora_targets))


def build_model(spec: ModelSpec, vocab_size: int | None, key: jax.Array) -> tuple[ModelConfig, Any, Any]:
    """(config, params, tokenizer or None): the pretrained model (its own vocabulary and tokenizer), or a random
    Llama over `vocab_size` tokens initialised from `key`; LoRA configured when spec.lora_rank > 0."""
    if spec.pretrained:
        from metapl.models.pretrained import load_pretrained

        m = load_pretrained(spec.pretrained, dtype=spec.dtype)
        return m.config.replace(lora=spec.lora, remat=spec.remat), m.params, m.tokenizer
    if vocab_size is None:
        raise ValueError("a random model needs the benchmark's vocabulary size")
    config = llama(vocab_size=vocab_size, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                   num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, intermediate_size=spec.intermediate_size,
                   max_position_embeddings=512, dtype=spec.dtype, param_dtype=spec.dtype, lora=spec.lora,
                   remat=spec.remat)
    return config, init_params(config, key), None


__all__ = ["ModelSpec", "build_model"]
