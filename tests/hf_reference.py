"""Tiny random transformers (PyTorch, CPU) models saved to disk: the independent reference for logits."""

from __future__ import annotations

import tempfile

import numpy as np

VOCAB = 96


def make_hf_model(kind: str, seed: int = 0, **overrides):
    """A tiny random transformers model of family `kind` and its config. Weights are scaled up (std 0.2) so
    that greedy decoding has clear winners rather than near-ties."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=overrides.pop("vocab_size", VOCAB), initializer_range=0.2)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=1,
                            **common, **overrides)
        model = tf.GPT2LMHeadModel(cfg)
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                             **common, **overrides)
        model = tf.Qwen2ForCausalLM(cfg)
    elif kind == "llama":
        cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=128, **common, **overrides)
        model = tf.LlamaForCausalLM(cfg)
    else:
        raise ValueError(kind)
    # Biases and norm weights start at 0 / 1 in transformers; randomise them so the test sees them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name.startswith("transformer.ln") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    return model


_SAVED: dict = {}


def saved_hf_model(kind: str, seed: int = 0, overrides: tuple = ()):
    """(directory, model) for a tiny model saved with save_pretrained; cached per process."""
    key = (kind, seed, repr(overrides))
    if key not in _SAVED:
        model = make_hf_model(kind, seed, **dict(overrides))
        directory = tempfile.mkdtemp(prefix=f"metapl-{kind}-")
        model.save_pretrained(directory)
        _SAVED[key] = (directory, model)
    return _SAVED[key]


def hf_logits(model, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits with position ids counted from the first real token (as metapl does)."""
    import torch

    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(tokens, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


def rel_err(a, b, mask=None) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        a, b = a[mask.astype(bool)], b[mask.astype(bool)]
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
