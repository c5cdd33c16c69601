"""Golden tests: metapl logits and greedy generation against transformers (PyTorch, CPU) on the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import SamplingConfig, apply, generate, load_hf_directory
from tests.hf_reference import VOCAB, hf_logits, rel_err, saved_hf_model

CASES = {
    "llama-gqa": ("llama", ()),
    "llama-tied-bias-headdim": ("llama", (("tie_word_embeddings", True), ("attention_bias", True),
                                          ("mlp_bias", True), ("head_dim", 16))),
    "llama-rope-linear": ("llama", (("rope_scaling", {"rope_type": "linear", "factor": 2.0}),)),
    "llama-rope-llama3": ("llama", (("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 16}),
                                    ("rope_theta", 500.0))),
    "qwen2-bias": ("qwen2", ()),
    "gpt2": ("gpt2", ()),
}


def padded_batch(rng, padding: str, t: int = 11):
    tokens = rng.integers(2, VOCAB, size=(3, t))
    mask = np.ones((3, t), np.int64)
    lengths = [t, t - 4, t - 7]
    for i, n in enumerate(lengths):
        if padding == "left":
            mask[i, : t - n] = 0
        else:
            mask[i, n:] = 0
    tokens = np.where(mask == 1, tokens, 0)
    return tokens, mask


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("padding", ["left", "right"])
def test_logits_match_transformers(case, padding, rng):
    kind, overrides = CASES[case]
    directory, hf_model = saved_hf_model(kind, 0, overrides)
    config, params, _ = load_hf_directory(directory)
    tokens, mask = padded_batch(rng, padding)
    ours = np.asarray(apply(params, config, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    ref = hf_logits(hf_model, tokens, mask)
    real = np.broadcast_to(mask[..., None], ref.shape)
    assert rel_err(ours, ref, real) <= 1e-4


@pytest.mark.parametrize("case", ["llama-gqa", "qwen2-bias", "gpt2"])
def test_greedy_generation_matches_transformers(case, rng):
    import torch

    kind, overrides = CASES[case]
    directory, hf_model = saved_hf_model(kind, 0, overrides)
    config, params, _ = load_hf_directory(directory)
    tokens, mask = padded_batch(rng, "left", t=9)
    new = 12
    out = generate(params, config, tokens, mask, jax.random.key(0), SamplingConfig(max_new_tokens=new, temperature=0))
    with torch.no_grad():
        ref = hf_model.generate(
            input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask), max_new_tokens=new,
            min_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None,
        )[:, tokens.shape[1]:].numpy()
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    assert bool(np.all(np.asarray(out.mask)))
