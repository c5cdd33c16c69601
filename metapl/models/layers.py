"""Flax (linen) building blocks of one transformer block.

A block is applied with explicit variables, `Block(config).apply({"params": p, "lora": l}, ...)`; the layer stack
in `transformer.py` scans that pure call over parameters stacked on a leading layer axis (or loops over per-layer
trees when decoding). The optional "lora" collection holds adapter matrices next to, never inside, the base
parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metapl.models.config import ModelConfig

# Masked attention scores use a large finite negative rather than -inf, so a query row with no visible key
# (a left-padding position) yields a finite, ignorable output instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "gelu_tanh": lambda z: jax.nn.gelu(z, approximate=True),
    "relu": jax.nn.relu,
}


def at_least_f32(dtype) -> jnp.dtype:
    """The precision for reductions and scores: float32, or float64 when computing in float64."""
    return jnp.promote_types(dtype, jnp.float32)


class Linear(nn.Module):
    """`y = x @ kernel (+ bias) (+ lora_scale * (x @ a) @ b)`; kernel is [in, out]. LoRA reads collection "lora"."""

    features: int
    use_bias: bool
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    lora_scale: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.normal(0.02), (x.shape[-1], self.features), self.param_dtype
        )
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            y = y + bias.astype(self.dtype)
        if self.has_variable("lora", "a"):
            if self.lora_scale == 0.0:
                raise ValueError(
                    f"LoRA weights were given for projection {self.name!r}, but config.lora does not list it "
                    "(config.lora is None or its targets omit it)"
                )
            a = self.get_variable("lora", "a").astype(self.dtype)
            b = self.get_variable("lora", "b").astype(self.dtype)
            y = y + self.lora_scale * jnp.dot(jnp.dot(x.astype(self.dtype), a), b)
        return y


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in (at least) float32 as Llama does: `scale * x / sqrt(mean(x^2) + eps)`."""

    eps: float
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
        x32 = x.astype(at_least_f32(x.dtype))
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(x.dtype) * y.astype(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm computed in (at least) float32: `scale * (x - mean) / sqrt(var + eps) + bias`."""

    eps: float
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (d,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (d,), self.param_dtype)
        x32 = x.astype(at_least_f32(x.dtype))
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(x.dtype)


def make_norm(config: ModelConfig, name: str) -> nn.Module:
    cls = RMSNorm if config.norm == "rms" else LayerNorm
    return cls(eps=config.norm_eps, param_dtype=config.params_dtype, name=name)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding in the half-split layout: x [B, T, heads, hd]; cos, sin [B, T, hd]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    acc = at_least_f32(x.dtype)
    return (x.astype(acc) * cos + rotated.astype(acc) * sin).astype(x.dtype)


def _lora_scale(config: ModelConfig, target: str) -> float:
    if config.lora is None or target not in config.lora.targets:
        return 0.0
    return config.lora.scale


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention.

    Call: x [B, T, D], cos/sin [B, T, hd] (ignored without RoPE), mask [B, T, T] bool (True = may attend)
    -> out [B, T, D]. (Cached decoding has its own forward, `decoding.cached_forward`.)
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask):
        c = self.config
        b, t, _ = x.shape
        h, kv, hd = c.num_heads, c.num_kv_heads, c.dim_per_head
        dense = lambda n, feats, bias: Linear(  # noqa: E731
            feats, bias, c.compute_dtype, c.params_dtype, _lora_scale(c, n), name=n
        )
        q = dense("q", h * hd, c.qkv_bias)(x).reshape(b, t, h, hd)
        k = dense("k", kv * hd, c.qkv_bias)(x).reshape(b, t, kv, hd)
        v = dense("v", kv * hd, c.qkv_bias)(x).reshape(b, t, kv, hd)
        if c.positions == "rope":
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Keys and values heads-first, [B, KV, T, hd]: the layout whose batched matmuls XLA runs fastest on
        # CPU, and the KV cache's layout.
        out = grouped_attention(q, k.swapaxes(1, 2), v.swapaxes(1, 2), mask)
        return dense("o", c.hidden_size, c.out_bias)(out.reshape(b, t, h * hd))


def grouped_attention(q, k, v, mask):
    """Softmax attention with float32 scores; query heads share key heads in groups.

    q [B, T, H, hd]; k, v [B, KV, S, hd]; mask broadcastable to [B, T, S] (True = may attend) -> [B, T, H, hd].
    """
    b, t, h, hd = q.shape
    kv, s = k.shape[1], k.shape[2]
    g = h // kv
    # Query rows of one key head, (group, time) flattened: [B, KV, G * T, hd].
    qh = q.reshape(b, t, kv, g, hd).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)
    scores = jnp.einsum("bkqd,bksd->bkqs", qh, k, preferred_element_type=at_least_f32(q.dtype))
    scores = scores.reshape(b, kv, g, t, s) / np.sqrt(hd)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv, g * t, s)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
    return out.reshape(b, kv, g, t, hd).transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd)


class MLP(nn.Module):
    """SwiGLU `down(act(gate(x)) * up(x))` when gated, else `down(act(up(x)))` (GPT-2)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = lambda n, feats: Linear(  # noqa: E731
            feats, c.mlp_bias, c.compute_dtype, c.params_dtype, _lora_scale(c, n), name=n
        )
        act = ACTIVATIONS[c.activation]
        if c.gated_mlp:
            hidden = act(dense("gate", c.intermediate_size)(x)) * dense("up", c.intermediate_size)(x)
        else:
            hidden = act(dense("up", c.intermediate_size)(x))
        return dense("down", c.hidden_size)(hidden)


class Block(nn.Module):
    """Pre-norm residual block: `x + attn(norm(x))`, then `x + mlp(norm(x))`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, mask):
        x = x + Attention(self.config, name="attn")(make_norm(self.config, "attn_norm")(x), cos, sin, mask)
        return x + MLP(self.config, name="mlp")(make_norm(self.config, "mlp_norm")(x))
