"""Model configuration: one frozen dataclass for the Llama family (Llama, Qwen2, SmolLM2) and GPT-2.

A `ModelConfig` is static (hashable) so it can be closed over or passed as a static argument to `jax.jit`.
Families differ only in the switches below; `llama(...)`, `qwen2(...)` and `gpt2(...)` set them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

Activation = Literal["silu", "gelu", "gelu_tanh", "relu"]

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling. `kind`: "linear" (positions / factor) or "llama3" (Llama 3.1 smooth scaling)."""

    kind: Literal["linear", "llama3"]
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters `W + (alpha / rank) * A @ B` on the named projections of every block.

    targets: a subset of ("q", "k", "v", "o", "gate", "up", "down"); GPT-2 has no "gate".
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoraConfig.rank must be >= 1, got {self.rank}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"LoraConfig.targets: unknown {unknown}; expected a subset of {LORA_TARGETS}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer.

    Attributes:
      vocab_size, hidden_size, num_layers, num_heads, intermediate_size: the usual sizes.
      num_kv_heads: key/value heads (grouped-query attention when < num_heads).
      head_dim: per-head width; defaults to hidden_size // num_heads.
      norm: "rms" (Llama) or "layer" (GPT-2); norm_eps its epsilon.
      activation: MLP nonlinearity; gated_mlp=True gives SwiGLU-style `down(act(gate(x)) * up(x))`.
      positions: "rope" or "learned" (GPT-2 position embeddings of size max_position_embeddings).
      rope_theta, rope_scaling: RoPE base and optional frequency scaling.
      qkv_bias: bias on the q/k/v projections (Qwen2, GPT-2); out_bias on the output projection (GPT-2);
      mlp_bias: bias on the MLP projections (GPT-2).
      tie_embeddings: the LM head is the transposed token embedding.
      dtype: compute dtype ("float32" default, "bfloat16" option; "float64" for finite-difference tests with
        jax_enable_x64); parameters stay in param_dtype.
      lora: the adapter architecture, or None. Adapter weights live in a separate tree (see `lora.py`).
      remat: what the backward pass keeps of each layer's forward. "dots" (default) keeps the matmul outputs
        and recomputes the elementwise work (norms, RoPE, activations), which is both smaller and, on XLA:CPU,
        ~10% faster than keeping everything; "full" keeps only the layer inputs (least memory, one extra
        forward); "none" keeps every intermediate. The numbers computed are the same.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int | None = None
    norm: Literal["rms", "layer"] = "rms"
    norm_eps: float = 1e-5
    activation: Activation = "silu"
    gated_mlp: bool = True
    positions: Literal["rope", "learned"] = "rope"
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    param_dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    lora: LoraConfig | None = None
    remat: Literal["dots", "full", "none"] = "dots"

    def __post_init__(self):
        if self.remat not in ("dots", "full", "none"):
            raise ValueError(f"remat must be 'dots', 'full' or 'none', got {self.remat!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not divisible by num_heads ({self.num_heads})")
        if self.positions == "rope" and self.dim_per_head % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.dim_per_head}")
        if self.lora is not None and "gate" in self.lora.targets and not self.gated_mlp:
            raise ValueError("LoRA target 'gate' needs a gated MLP; this model has none")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def compute_dtype(self):
        return np.dtype(self.dtype) if self.dtype != "bfloat16" else _bf16()

    @property
    def params_dtype(self):
        return np.dtype(self.param_dtype) if self.param_dtype != "bfloat16" else _bf16()

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Number of parameters of the LM (without LoRA)."""
        d, h, kv, hd, f = self.hidden_size, self.num_heads, self.num_kv_heads, self.dim_per_head, self.intermediate_size
        attn = d * h * hd + 2 * d * kv * hd + h * hd * d
        if self.qkv_bias:
            attn += h * hd + 2 * kv * hd
        if self.out_bias:
            attn += d
        mlp = (3 if self.gated_mlp else 2) * d * f + ((2 * f if self.gated_mlp else f) + d if self.mlp_bias else 0)
        norms = 2 * d * (2 if self.norm == "layer" else 1)
        n = self.num_layers * (attn + mlp + norms) + d * (2 if self.norm == "layer" else 1)
        if include_embeddings:
            n += self.vocab_size * d * (1 if self.tie_embeddings else 2)
            if self.positions == "learned":
                n += self.max_position_embeddings * d
        return n


def _bf16():
    import jax.numpy as jnp

    return jnp.bfloat16


def rope_inverse_frequencies(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [head_dim // 2] in float32, including the configured scaling."""
    d = config.dim_per_head
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    s = config.rope_scaling
    if s is None:
        return inv_freq.astype(np.float32)
    if s.kind == "linear":
        return (inv_freq / s.factor).astype(np.float32)
    if s.kind == "llama3":
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
        smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unknown rope scaling kind {s.kind!r}")


def llama(**kw) -> ModelConfig:
    """A Llama-family config (RMSNorm, RoPE, SwiGLU, no biases). Keyword arguments override."""
    base = dict(norm="rms", activation="silu", gated_mlp=True, positions="rope")
    base.update(kw)
    return ModelConfig(**base)


def qwen2(**kw) -> ModelConfig:
    """A Qwen2 config: Llama with bias on the q/k/v projections."""
    base = dict(norm="rms", activation="silu", gated_mlp=True, positions="rope", qkv_bias=True)
    base.update(kw)
    return ModelConfig(**base)


def gpt2(**kw) -> ModelConfig:
    """A GPT-2 config: learned positions, LayerNorm, tanh-GELU MLP, biases everywhere, tied head."""
    base = dict(
        norm="layer",
        activation="gelu_tanh",
        gated_mlp=False,
        positions="learned",
        qkv_bias=True,
        out_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
    )
    base.update(kw)
    if "num_kv_heads" not in base:
        base["num_kv_heads"] = base["num_heads"]
    return ModelConfig(**base)


def tiny(family: str = "llama", **kw) -> ModelConfig:
    """A tiny config for tests and examples (d=32, 2 layers, vocab 128)."""
    base = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
                max_position_embeddings=256)
    if family == "gpt2":
        base.pop("num_kv_heads")
    base.update(kw)
    return {"llama": llama, "qwen2": qwen2, "gpt2": gpt2}[family](**base)
