"""LoRA adapters as a parameter tree of their own.

The adapter tree mirrors the paths of the projections it adapts:
`{"layers": {"attn": {"q": {"a": [L, in, r], "b": [L, r, out]}, ...}, "mlp": {...}}}`.
`b` starts at zero, so a fresh adapter leaves the model unchanged; dropping the tree gives the base model.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from metapl.models.config import ModelConfig
from metapl.models.transformer import Params

_MODULE = {"q": "attn", "k": "attn", "v": "attn", "o": "attn", "gate": "mlp", "up": "mlp", "down": "mlp"}


def projection_shape(config: ModelConfig, target: str) -> tuple[int, int]:
    """(in, out) of the projection `target` in one block."""
    d, f = config.hidden_size, config.intermediate_size
    q_out, kv_out = config.num_heads * config.dim_per_head, config.num_kv_heads * config.dim_per_head
    return {
        "q": (d, q_out), "k": (d, kv_out), "v": (d, kv_out), "o": (q_out, d),
        "gate": (d, f), "up": (d, f), "down": (f, d),
    }[target]


def init_lora(config: ModelConfig, key: jax.Array) -> Params:
    """Fresh adapters for `config.lora`: `a` uniform in ±1/sqrt(in) (as PEFT's default), `b` zero."""
    if config.lora is None:
        raise ValueError("init_lora needs a config with a `lora` section (ModelConfig(lora=LoraConfig(...)))")
    r, n_layers = config.lora.rank, config.num_layers
    tree: dict = {}
    for i, target in enumerate(config.lora.targets):
        fan_in, fan_out = projection_shape(config, target)
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(jax.random.fold_in(key, i), (n_layers, fan_in, r), minval=-bound, maxval=bound)
        tree.setdefault(_MODULE[target], {})[target] = {
            "a": a.astype(config.params_dtype),
            "b": jnp.zeros((n_layers, r, fan_out), config.params_dtype),
        }
    return {"layers": tree}


def merged(params: Params, lora: Params | None, config: ModelConfig) -> Params:
    """`params` with `lora` folded in (`merge_lora`), or `params` itself without an adapter."""
    return params if lora is None else merge_lora(params, lora, config)


def merge_lora(params: Params, lora: Params, config: ModelConfig) -> Params:
    """Base parameters with the adapters folded in: kernel + scale * a @ b (for export or fast inference)."""
    if config.lora is None:
        raise ValueError("merge_lora needs the config the adapters were made with")
    layers = jax.tree_util.tree_map(lambda x: x, params["layers"])  # shallow copy of the nested dicts
    for module, targets in lora["layers"].items():
        for target, ab in targets.items():
            kernel = layers[module][target]["kernel"]
            delta = config.lora.scale * jnp.einsum("lir,lro->lio", ab["a"].astype(jnp.float32),
                                                   ab["b"].astype(jnp.float32))
            layers[module][target] = dict(layers[module][target], kernel=(kernel + delta).astype(kernel.dtype))
    return dict(params, layers=layers)
