"""Hugging Face checkpoint directories (config.json + *.safetensors) in and out, for Llama, Qwen2 and GPT-2.

Import maps `config.json` onto a `ModelConfig` (fields it cannot honour raise `UnsupportedConfigError` naming
them) and the safetensors tensors onto the metapl parameter tree. Export writes the inverse, so a trained
policy can be loaded by `transformers.AutoModelForCausalLM.from_pretrained` and served by standard tools.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from metapl.models.config import ModelConfig, RopeScaling, gpt2, llama, qwen2

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "gpt2")


class CheckpointError(ValueError):
    """A checkpoint directory or file is missing, malformed or inconsistent."""


class UnsupportedConfigError(CheckpointError):
    """config.json asks for something metapl's model does not implement."""


# Keys every transformers config may carry that do not change the forward pass.
_GENERIC_KEYS = {
    "_name_or_path", "architectures", "chunk_size_feed_forward", "dtype", "torch_dtype", "id2label", "label2id",
    "is_encoder_decoder", "model_type", "output_attentions", "output_hidden_states", "problem_type",
    "return_dict", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "use_cache", "initializer_range", "tie_word_embeddings", "is_decoder",
    "add_cross_attention", "tokenizer_class", "prefix", "task_specific_params", "finetuning_task",
    "cross_attention_hidden_size", "tf_legacy_loss", "use_bfloat16", "torchscript", "pruned_heads",
    "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "tie_encoder_decoder",
}
# Dropout and training-only knobs: irrelevant to a deterministic forward pass.
_TRAINING_ONLY_KEYS = {
    "attention_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout", "summary_type",
    "summary_use_proj", "summary_activation", "summary_proj_to_labels", "pretraining_tp", "n_ctx",
    "reorder_and_upcast_attn",
}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "relu": "relu"}


def _rope_from_hf(cfg: dict, problems: list[str]) -> tuple[float, RopeScaling | None]:
    params = cfg.get("rope_parameters") or {}
    legacy = cfg.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    spec = {**legacy, **params}
    kind = spec.get("rope_type", spec.get("type", "default"))
    if spec.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        problems.append("partial_rotary_factor (partial RoPE is not implemented)")
    if kind == "default":
        return theta, None
    needed = {"linear": ["factor"], "llama3": ["factor", "low_freq_factor", "high_freq_factor",
                                                "original_max_position_embeddings"]}.get(kind, [])
    missing = [k for k in needed if k not in spec]
    if missing:
        problems.append(f"rope type {kind!r} without {', '.join(missing)}")
        return theta, None
    if kind == "linear":
        return theta, RopeScaling("linear", float(spec["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            "llama3",
            float(spec["factor"]),
            float(spec["low_freq_factor"]),
            float(spec["high_freq_factor"]),
            int(spec["original_max_position_embeddings"]),
        )
    problems.append(f"rope type {kind!r} (supported: default, linear, llama3)")
    return theta, None


def config_from_hf(cfg: dict, source: str = "config.json") -> ModelConfig:
    """A `ModelConfig` from a parsed config.json; raises UnsupportedConfigError naming every unsupported field."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedConfigError(
            f"{source}: model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    problems: list[str] = []
    handled: set[str] = set()
    required = {"gpt2": ("vocab_size", "n_embd", "n_layer", "n_head")}.get(
        model_type, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"))
    missing = [k for k in required if cfg.get(k) is None]
    if missing:
        raise CheckpointError(f"{source}: missing required field(s): {', '.join(missing)}")

    def take(key, default=None):
        handled.add(key)
        return cfg.get(key, default)

    if model_type == "gpt2":
        act = take("activation_function", "gelu_new")
        if act not in _ACTIVATIONS:
            problems.append(f"activation_function={act!r}")
        if take("scale_attn_by_inverse_layer_idx", False):
            problems.append("scale_attn_by_inverse_layer_idx=true")
        if not take("scale_attn_weights", True):
            problems.append("scale_attn_weights=false")
        if take("add_cross_attention", False):
            problems.append("add_cross_attention=true")
        d = int(take("n_embd"))
        config = gpt2(
            vocab_size=int(take("vocab_size")),
            hidden_size=d,
            num_layers=int(take("n_layer")),
            num_heads=int(take("n_head")),
            intermediate_size=int(take("n_inner") or 4 * d),
            max_position_embeddings=int(take("n_positions", 1024)),
            norm_eps=float(take("layer_norm_epsilon", 1e-5)),
            activation=_ACTIVATIONS.get(act, "gelu_tanh"),
        )
        if not cfg.get("tie_word_embeddings", True):
            problems.append("tie_word_embeddings=false (GPT-2 always ties its head)")
    else:
        act = take("hidden_act", "silu")
        if act not in _ACTIVATIONS:
            problems.append(f"hidden_act={act!r}")
        theta, scaling = _rope_from_hf(cfg, problems)
        handled.update({"rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor"})
        attention_bias = bool(take("attention_bias", False))
        if model_type == "qwen2":
            if take("use_sliding_window", False):
                problems.append("use_sliding_window=true (sliding-window attention is not implemented)")
            take("sliding_window")
            take("max_window_layers")
            layer_types = take("layer_types") or []
            if any(t != "full_attention" for t in layer_types):
                problems.append(f"layer_types={sorted(set(layer_types))} (only full_attention)")
        else:
            layer_types = take("layer_types") or []
            if any(t != "full_attention" for t in layer_types):
                problems.append(f"layer_types={sorted(set(layer_types))} (only full_attention)")
        heads = int(take("num_attention_heads"))
        d = int(take("hidden_size"))
        head_dim = take("head_dim")
        make = qwen2 if model_type == "qwen2" else llama
        config = make(
            vocab_size=int(take("vocab_size")),
            hidden_size=d,
            num_layers=int(take("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(take("num_key_value_heads") or heads),
            head_dim=None if head_dim is None or int(head_dim) == d // heads else int(head_dim),
            intermediate_size=int(take("intermediate_size")),
            max_position_embeddings=int(take("max_position_embeddings", 2048)),
            norm_eps=float(take("rms_norm_eps", 1e-6)),
            activation=_ACTIVATIONS.get(act, "silu"),
            rope_theta=theta,
            rope_scaling=scaling,
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            out_bias=attention_bias if model_type == "llama" else False,
            mlp_bias=bool(take("mlp_bias", False)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        )
        if model_type == "qwen2" and attention_bias:
            problems.append("attention_bias=true on qwen2")
    if cfg.get("quantization_config"):
        problems.append("quantization_config (quantised safetensors are not supported; dequantise first)")
    unknown = sorted(set(cfg) - handled - _GENERIC_KEYS - _TRAINING_ONLY_KEYS - {"quantization_config"})
    problems += [f"{k} (unknown field)" for k in unknown]
    if problems:
        raise UnsupportedConfigError(f"{source}: unsupported config fields: " + "; ".join(problems))
    return config


def config_to_hf(config: ModelConfig, model_type: str | None = None, **token_ids) -> dict:
    """config.json contents for `config` (model_type inferred: gpt2 for learned positions, qwen2 for qkv bias only)."""
    if model_type is None:
        if config.positions == "learned":
            model_type = "gpt2"
        elif config.qkv_bias and not config.out_bias:
            model_type = "qwen2"
        else:
            model_type = "llama"
    act = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu_new" if model_type == "gpt2" else
           "gelu_pytorch_tanh", "relu": "relu"}[config.activation]
    common = {"vocab_size": config.vocab_size, "tie_word_embeddings": config.tie_embeddings,
              "model_type": model_type, "dtype": str(np.dtype(config.params_dtype)), **token_ids}
    if model_type == "gpt2":
        return {
            **common, "architectures": ["GPT2LMHeadModel"], "n_embd": config.hidden_size,
            "n_layer": config.num_layers, "n_head": config.num_heads, "n_inner": config.intermediate_size,
            "n_positions": config.max_position_embeddings, "layer_norm_epsilon": config.norm_eps,
            "activation_function": act,
        }
    rope: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": "default"}
    s = config.rope_scaling
    if s is not None:
        rope.update(rope_type=s.kind, factor=s.factor)
        if s.kind == "llama3":
            rope.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                        original_max_position_embeddings=s.original_max_position_embeddings)
    out = {
        **common,
        "architectures": ["Qwen2ForCausalLM" if model_type == "qwen2" else "LlamaForCausalLM"],
        "hidden_size": config.hidden_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.dim_per_head, "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings, "rms_norm_eps": config.norm_eps,
        "hidden_act": act, "rope_parameters": rope,
        # Older transformers read these two top-level keys instead of rope_parameters.
        "rope_theta": config.rope_theta,
    }
    if s is not None:
        out["rope_scaling"] = dict(rope)
    if model_type == "llama":
        out.update(attention_bias=config.qkv_bias, mlp_bias=config.mlp_bias)
    return out


# ---------------------------------------------------------------------------------------------- tensors

def _read_safetensors(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    index = directory / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files (PyTorch .bin checkpoints are not read)")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        path = directory / name
        if not path.exists():
            raise CheckpointError(f"{index}: lists {name}, which is missing")
        tensors.update(load_file(str(path)))
    return tensors


class _Tensors:
    """Name -> array with bookkeeping, so that tensors nobody consumed are reported, not silently dropped."""

    def __init__(self, tensors: dict[str, np.ndarray], source: str, ignore=()):
        self.tensors, self.source, self.used = tensors, source, set()
        self.ignore = tuple(ignore)

    def __contains__(self, name):
        return name in self.tensors

    def pop(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise CheckpointError(f"{self.source}: missing tensor {name!r}")
        self.used.add(name)
        return self.tensors[name]

    def check_all_used(self):
        left = sorted(n for n in self.tensors if n not in self.used and not n.endswith(self.ignore))
        if left:
            shown = ", ".join(left[:8]) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
            raise CheckpointError(f"{self.source}: {len(left)} tensors that this model does not use: {shown}")


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.stack(arrays, axis=0)


def params_from_hf_tensors(tensors: dict[str, np.ndarray], config: ModelConfig, model_type: str,
                           source: str = "checkpoint") -> dict:
    """The metapl parameter tree from HF tensor names (torch [out, in] linear weights are transposed)."""
    dt = config.params_dtype
    cast = lambda a: np.asarray(a).astype(dt)  # noqa: E731
    n = config.num_layers
    if model_type == "gpt2":
        # Checkpoints saved by GPT2LMHeadModel carry a "transformer." prefix; the original ones do not.
        prefix = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""
        t = _Tensors(tensors, source, ignore=(".attn.bias", ".attn.masked_bias", "lm_head.weight"))
        d = config.hidden_size
        layers: dict[str, Any] = {"attn_norm": {}, "mlp_norm": {}, "attn": {}, "mlp": {}}

        def per_layer(fmt):
            return [t.pop(prefix + fmt.format(i)) for i in range(n)]

        c_attn_w, c_attn_b = per_layer("h.{}.attn.c_attn.weight"), per_layer("h.{}.attn.c_attn.bias")
        for j, name in enumerate("qkv"):
            layers["attn"][name] = {
                "kernel": cast(_stack([w[:, j * d:(j + 1) * d] for w in c_attn_w])),  # Conv1D is [in, out]
                "bias": cast(_stack([b[j * d:(j + 1) * d] for b in c_attn_b])),
            }
        layers["attn"]["o"] = {"kernel": cast(_stack(per_layer("h.{}.attn.c_proj.weight"))),
                               "bias": cast(_stack(per_layer("h.{}.attn.c_proj.bias")))}
        layers["mlp"]["up"] = {"kernel": cast(_stack(per_layer("h.{}.mlp.c_fc.weight"))),
                               "bias": cast(_stack(per_layer("h.{}.mlp.c_fc.bias")))}
        layers["mlp"]["down"] = {"kernel": cast(_stack(per_layer("h.{}.mlp.c_proj.weight"))),
                                 "bias": cast(_stack(per_layer("h.{}.mlp.c_proj.bias")))}
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            layers[ours] = {"scale": cast(_stack(per_layer(f"h.{{}}.{theirs}.weight"))),
                            "bias": cast(_stack(per_layer(f"h.{{}}.{theirs}.bias")))}
        params = {
            "embed": {"embedding": cast(t.pop(prefix + "wte.weight"))},
            "pos_embed": {"embedding": cast(t.pop(prefix + "wpe.weight"))},
            "layers": layers,
            "final_norm": {"scale": cast(t.pop(prefix + "ln_f.weight")), "bias": cast(t.pop(prefix + "ln_f.bias"))},
        }
        t.check_all_used()
        return params

    t = _Tensors(tensors, source, ignore=(".rotary_emb.inv_freq",))
    if config.tie_embeddings and "lm_head.weight" in t:
        t.used.add("lm_head.weight")  # some tied checkpoints also store the (identical) head

    def linear(fmt, bias):
        out = {"kernel": cast(_stack([t.pop(fmt.format(i) + ".weight").T for i in range(n)]))}
        if bias:
            out["bias"] = cast(_stack([t.pop(fmt.format(i) + ".bias") for i in range(n)]))
        return out

    attn = {name: linear(f"model.layers.{{}}.self_attn.{name}_proj", config.qkv_bias) for name in "qkv"}
    attn["o"] = linear("model.layers.{}.self_attn.o_proj", config.out_bias)
    mlp = {name: linear(f"model.layers.{{}}.mlp.{name}_proj", config.mlp_bias) for name in ("gate", "up", "down")}
    params = {
        "embed": {"embedding": cast(t.pop("model.embed_tokens.weight"))},
        "layers": {
            "attn_norm": {"scale": cast(_stack([t.pop(f"model.layers.{i}.input_layernorm.weight") for i in range(n)]))},
            "mlp_norm": {"scale": cast(_stack([t.pop(f"model.layers.{i}.post_attention_layernorm.weight")
                                               for i in range(n)]))},
            "attn": attn,
            "mlp": mlp,
        },
        "final_norm": {"scale": cast(t.pop("model.norm.weight"))},
    }
    if not config.tie_embeddings:
        params["lm_head"] = {"embedding": cast(t.pop("lm_head.weight"))}
    t.check_all_used()
    return params


def params_to_hf_tensors(params: dict, config: ModelConfig, model_type: str) -> dict[str, np.ndarray]:
    """HF tensor names -> arrays (contiguous, in the params' dtype) for a metapl parameter tree."""
    p = {k: v for k, v in params.items()}
    arr = lambda a: np.ascontiguousarray(np.asarray(a))  # noqa: E731
    out: dict[str, np.ndarray] = {}
    layers = p["layers"]
    n = config.num_layers
    if model_type == "gpt2":
        out["transformer.wte.weight"] = arr(p["embed"]["embedding"])
        out["transformer.wpe.weight"] = arr(p["pos_embed"]["embedding"])
        for i in range(n):
            h = f"transformer.h.{i}."
            a = layers["attn"]
            out[h + "attn.c_attn.weight"] = arr(np.concatenate([np.asarray(a[x]["kernel"][i]) for x in "qkv"], axis=1))
            out[h + "attn.c_attn.bias"] = arr(np.concatenate([np.asarray(a[x]["bias"][i]) for x in "qkv"]))
            out[h + "attn.c_proj.weight"] = arr(a["o"]["kernel"][i])
            out[h + "attn.c_proj.bias"] = arr(a["o"]["bias"][i])
            out[h + "mlp.c_fc.weight"] = arr(layers["mlp"]["up"]["kernel"][i])
            out[h + "mlp.c_fc.bias"] = arr(layers["mlp"]["up"]["bias"][i])
            out[h + "mlp.c_proj.weight"] = arr(layers["mlp"]["down"]["kernel"][i])
            out[h + "mlp.c_proj.bias"] = arr(layers["mlp"]["down"]["bias"][i])
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
                out[h + theirs + ".weight"] = arr(layers[ours]["scale"][i])
                out[h + theirs + ".bias"] = arr(layers[ours]["bias"][i])
        out["transformer.ln_f.weight"] = arr(p["final_norm"]["scale"])
        out["transformer.ln_f.bias"] = arr(p["final_norm"]["bias"])
        return out
    out["model.embed_tokens.weight"] = arr(p["embed"]["embedding"])
    for i in range(n):
        h = f"model.layers.{i}."
        for name in "qkvo":
            lin = layers["attn"][name]
            out[h + f"self_attn.{name}_proj.weight"] = arr(np.asarray(lin["kernel"][i]).T)
            if "bias" in lin:
                out[h + f"self_attn.{name}_proj.bias"] = arr(lin["bias"][i])
        for name in ("gate", "up", "down"):
            lin = layers["mlp"][name]
            out[h + f"mlp.{name}_proj.weight"] = arr(np.asarray(lin["kernel"][i]).T)
            if "bias" in lin:
                out[h + f"mlp.{name}_proj.bias"] = arr(lin["bias"][i])
        out[h + "input_layernorm.weight"] = arr(layers["attn_norm"]["scale"][i])
        out[h + "post_attention_layernorm.weight"] = arr(layers["mlp_norm"]["scale"][i])
    out["model.norm.weight"] = arr(p["final_norm"]["scale"])
    if not config.tie_embeddings:
        out["lm_head.weight"] = arr(p["lm_head"]["embedding"])
    return out


# ---------------------------------------------------------------------------------------------- directories

def load_hf_directory(path: str | os.PathLike, dtype: str | None = None) -> tuple[ModelConfig, dict, dict]:
    """(config, params, raw config.json) from a Hugging Face model directory. dtype overrides param_dtype."""
    directory = Path(path)
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{directory}: no config.json (not a Hugging Face model directory)")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    try:
        config = config_from_hf(raw, str(cfg_path))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as e:  # e.g. a number written as a string
        raise CheckpointError(f"{cfg_path}: invalid value ({e})") from None
    if dtype is not None:
        config = config.replace(param_dtype=dtype, dtype=dtype)
    params = params_from_hf_tensors(_read_safetensors(directory), config, raw["model_type"], str(directory))
    _check_shapes(params, config, str(directory))
    return config, params, raw


def _check_shapes(params: dict, config: ModelConfig, source: str):
    import jax

    from metapl.models.transformer import init_params

    expected = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
    flat_expected = dict(jax.tree_util.tree_leaves_with_path(expected))
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        want = flat_expected.get(path)
        if want is None or tuple(want.shape) != tuple(leaf.shape):
            name = jax.tree_util.keystr(path)
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(leaf.shape)}, config.json implies "
                f"{None if want is None else tuple(want.shape)}"
            )


def save_hf_directory(
    path: str | os.PathLike,
    params: dict,
    config: ModelConfig,
    tokenizer=None,
    model_type: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Write config.json, model.safetensors (and the tokenizer files, if given) to `path`.

    Merge LoRA adapters first (`metapl.models.lora.merge_lora`) to export an adapted policy.
    """
    from safetensors.numpy import save_file

    if config.lora is not None:
        raise ValueError(
            "the config has a LoRA section, but adapters are not part of the exported weights: merge them with "
            "merge_lora(params, lora, config) and export with config.replace(lora=None)"
        )
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config_to_hf(config, model_type)
    if tokenizer is not None:
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, key, None)
            if value is not None:
                cfg[key] = value
    tensors = params_to_hf_tensors(params, config, cfg["model_type"])
    if dtype is not None:
        import ml_dtypes

        target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
        tensors = {k: v.astype(target) for k, v in tensors.items()}
        cfg["dtype"] = dtype
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory
