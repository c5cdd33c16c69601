"""Hugging Face directory import/export: round trips through transformers, and clear errors on bad input."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import (
    CheckpointError,
    LoraConfig,
    UnsupportedConfigError,
    apply,
    init_lora,
    init_params,
    load_hf_directory,
    merge_lora,
    save_hf_directory,
    tiny,
)
from metapl.models.hf_format import config_from_hf
from tests.hf_reference import VOCAB, hf_logits, rel_err, saved_hf_model


def _batch(rng):
    tokens = rng.integers(0, VOCAB, size=(2, 7))
    mask = np.ones_like(tokens)
    mask[1, :3] = 0
    return tokens, mask


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_export_reimport_and_transformers_load_preserve_logits(kind, tmp_path, rng):
    import torch
    import transformers as tf

    directory, _ = saved_hf_model(kind)
    config, params, _ = load_hf_directory(directory)
    tokens, mask = _batch(rng)
    before = np.asarray(apply(params, config, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))

    save_hf_directory(tmp_path / "out", params, config)
    config2, params2, _ = load_hf_directory(tmp_path / "out")
    assert config2 == config
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    reloaded = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    assert rel_err(hf_logits(reloaded, tokens, mask), before, np.broadcast_to(mask[..., None], before.shape)) <= 1e-5


def test_export_of_merged_lora_policy_matches_adapted_model(tmp_path, rng):
    import torch
    import transformers as tf

    config = tiny("llama", lora=LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "down")))
    params = init_params(config, jax.random.key(0))
    lora = init_lora(config, jax.random.key(1))
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), lora)  # non-zero b
    tokens, mask = _batch(rng)
    tokens = tokens % config.vocab_size
    adapted = np.asarray(apply(params, config, jnp.asarray(tokens), attention_mask=jnp.asarray(mask), lora=lora))
    merged = merge_lora(params, lora, config)
    save_hf_directory(tmp_path / "merged", merged, config.replace(lora=None))
    hf = tf.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32).eval()
    assert rel_err(hf_logits(hf, tokens, mask), adapted, np.broadcast_to(mask[..., None], adapted.shape)) <= 1e-4


def test_bfloat16_export_and_import(tmp_path):
    directory, _ = saved_hf_model("llama")
    config, params, _ = load_hf_directory(directory)
    save_hf_directory(tmp_path / "bf16", params, config, dtype="bfloat16")
    config2, params2, _ = load_hf_directory(tmp_path / "bf16", dtype="float32")
    a = np.asarray(params["layers"]["mlp"]["up"]["kernel"])
    b = np.asarray(params2["layers"]["mlp"]["up"]["kernel"])
    assert np.abs(a - b).max() <= 2 ** -7 * np.abs(a).max()  # bfloat16 rounding, nothing worse


def _llama_json():
    return {"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6}


def test_unsupported_config_fields_are_named():
    cfg = _llama_json() | {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4},
                           "some_new_knob": 3, "hidden_act": "relu2"}
    with pytest.raises(UnsupportedConfigError) as e:
        config_from_hf(cfg, "x/config.json")
    msg = str(e.value)
    for name in ("yarn", "some_new_knob", "hidden_act='relu2'", "x/config.json"):
        assert name in msg


def test_unsupported_model_type_and_sliding_window():
    with pytest.raises(UnsupportedConfigError, match="model_type 'mamba'"):
        config_from_hf({"model_type": "mamba"})
    qwen = _llama_json() | {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16}
    with pytest.raises(UnsupportedConfigError, match="use_sliding_window"):
        config_from_hf(qwen)


def test_generic_and_dropout_fields_are_accepted():
    cfg = _llama_json() | {"architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16",
                           "attention_dropout": 0.1, "pretraining_tp": 1, "use_cache": True}
    config = config_from_hf(cfg)
    assert config.num_kv_heads == 2 and config.norm_eps == 1e-6


def test_missing_and_extra_tensors_are_reported(tmp_path):
    from safetensors.numpy import load_file, save_file

    directory, _ = saved_hf_model("llama")
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    tensors = load_file(str(broken / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        load_hf_directory(broken)

    tensors = load_file(str(directory + "/model.safetensors"))
    tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="does not use: model.layers.0.extra.weight"):
        load_hf_directory(broken)


def test_shape_mismatch_and_bad_json_are_reported(tmp_path):
    directory, _ = saved_hf_model("llama")
    bad = tmp_path / "bad"
    shutil.copytree(directory, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        load_hf_directory(bad)
    (bad / "config.json").write_text('{"model_type": "llama",\n "vocab_size": }')
    with pytest.raises(CheckpointError, match="line 2"):
        load_hf_directory(bad)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf_directory(tmp_path)


def test_export_refuses_a_config_with_unmerged_adapters(tmp_path):
    config = tiny("llama", lora=LoraConfig(rank=2))
    with pytest.raises(ValueError, match="merge_lora"):
        save_hf_directory(tmp_path / "x", init_params(config, jax.random.key(0)), config)


def test_missing_required_fields_are_named():
    cfg = _llama_json()
    del cfg["intermediate_size"]
    with pytest.raises(CheckpointError, match="missing required field.*intermediate_size"):
        config_from_hf(cfg, "c.json")
    cfg = _llama_json() | {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    with pytest.raises(UnsupportedConfigError, match="without low_freq_factor"):
        config_from_hf(cfg)
