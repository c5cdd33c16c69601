"""GGUF import (llama.cpp's format) for Llama-architecture models, e.g. the embedded SmolLM2-135M-Instruct.

Quantised tensors are dequantised to float32 with the `gguf` package. llama.cpp stores the Q and K
projections with their rows permuted for its interleaved RoPE; we undo that so the weights match the
half-split RoPE of Hugging Face checkpoints and of `metapl.models.layers.apply_rope`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from metapl.models.config import ModelConfig, RopeScaling, llama
from metapl.models.hf_format import CheckpointError, UnsupportedConfigError
from metapl.models.tokenizer import tokenizer_from_gguf_metadata

# Other architectures (qwen2, ...) are refused rather than guessed at until a test covers them.
SUPPORTED_ARCHITECTURES = ("llama",)


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation. weight [n_heads * hd, in] (torch layout) -> same shape.

    llama.cpp reorders each head's rows from [first half | second half] to interleaved pairs; the inverse
    regroups rows (h, i, pair) -> (h, pair, i).
    """
    rows = weight.shape[0]
    hd = rows // n_heads
    return weight.reshape(n_heads, hd // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def read_metadata(reader) -> dict:
    """GGUF key -> Python value (strings decoded, arrays as lists)."""
    meta = {}
    for key, field in reader.fields.items():
        try:
            meta[key] = field.contents()
        except Exception:  # noqa: BLE001 - a field we cannot decode is not one we use
            continue
    return meta


def config_from_gguf(meta: dict, tensor_names: set[str], source: str) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedConfigError(
            f"{source}: general.architecture={arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )

    def get(key, default=None, required=True):
        full = f"{arch}.{key}"
        if full not in meta:
            if required and default is None:
                raise CheckpointError(f"{source}: missing metadata key {full!r}")
            return default
        return meta[full]

    heads = int(get("attention.head_count"))
    d = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", d // heads, required=False))
    if int(get("rope.dimension_count", head_dim, required=False)) != head_dim:
        raise UnsupportedConfigError(f"{source}: {arch}.rope.dimension_count != head_dim (partial RoPE)")
    scaling = None
    kind = get("rope.scaling.type", "none", required=False)
    if kind == "linear":
        scaling = RopeScaling("linear", float(get("rope.scaling.factor")))
    elif kind not in ("none", None):
        raise UnsupportedConfigError(f"{source}: {arch}.rope.scaling.type={kind!r} (supported: none, linear)")
    vocab = int(get("vocab_size", len(meta.get("tokenizer.ggml.tokens", [])) or None))
    return llama(
        vocab_size=vocab,
        hidden_size=d,
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads, required=False)),
        head_dim=None if head_dim == d // heads else head_dim,
        intermediate_size=int(get("feed_forward_length")),
        max_position_embeddings=int(get("context_length", 2048, required=False)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10000.0, required=False)),
        rope_scaling=scaling,
        tie_embeddings="output.weight" not in tensor_names,
    )


def load_gguf(path: str | os.PathLike, dtype: str | None = None):
    """(config, params, tokenizer) from a GGUF file; weights dequantised to float32 (or `dtype`)."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises bare ValueError/struct errors on bad files
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None
    meta = read_metadata(reader)
    by_name = {t.name: t for t in reader.tensors}
    config = config_from_gguf(meta, set(by_name), str(path))
    if dtype is not None:
        config = config.replace(param_dtype=dtype, dtype=dtype)
    out_dtype = config.params_dtype
    used: set[str] = set()

    def tensor(name: str) -> np.ndarray:
        if name not in by_name:
            raise CheckpointError(f"{path}: missing tensor {name!r}")
        used.add(name)
        t = by_name[name]
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.asarray(arr, dtype=np.float32).reshape(tuple(int(x) for x in reversed(t.shape)))

    n = config.num_layers
    cast = lambda a: np.asarray(a).astype(out_dtype)  # noqa: E731

    def stack(fmt, transform=lambda w: w):
        return cast(np.stack([transform(tensor(fmt.format(i))) for i in range(n)]))

    attn = {
        "q": {"kernel": stack("blk.{}.attn_q.weight", lambda w: unpermute_rope_rows(w, config.num_heads).T)},
        "k": {"kernel": stack("blk.{}.attn_k.weight", lambda w: unpermute_rope_rows(w, config.num_kv_heads).T)},
        "v": {"kernel": stack("blk.{}.attn_v.weight", lambda w: w.T)},
        "o": {"kernel": stack("blk.{}.attn_output.weight", lambda w: w.T)},
    }
    params = {
        "embed": {"embedding": cast(tensor("token_embd.weight"))},
        "layers": {
            "attn_norm": {"scale": stack("blk.{}.attn_norm.weight")},
            "mlp_norm": {"scale": stack("blk.{}.ffn_norm.weight")},
            "attn": attn,
            "mlp": {
                "gate": {"kernel": stack("blk.{}.ffn_gate.weight", lambda w: w.T)},
                "up": {"kernel": stack("blk.{}.ffn_up.weight", lambda w: w.T)},
                "down": {"kernel": stack("blk.{}.ffn_down.weight", lambda w: w.T)},
            },
        },
        "final_norm": {"scale": cast(tensor("output_norm.weight"))},
    }
    if not config.tie_embeddings:
        params["lm_head"] = {"embedding": cast(tensor("output.weight"))}
    left = sorted(set(by_name) - used)
    if left:
        raise CheckpointError(f"{path}: {len(left)} tensors that this model does not use: {', '.join(left[:8])}")
    tokenizer = tokenizer_from_gguf_metadata(meta, str(path))
    return config, params, tokenizer
