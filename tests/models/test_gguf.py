"""GGUF import against transformers' own GGUF loader, on a tiny file written as llama.cpp writes them."""

import jax.numpy as jnp
import numpy as np
import pytest

from metapl.models import CheckpointError, apply, load_gguf, load_pretrained
from metapl.models.gguf_format import unpermute_rope_rows
from tests.gguf_fixture import permute_rows, vocabulary, write_tiny_llama_gguf
from tests.hf_reference import hf_logits, make_hf_model, rel_err


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model = make_hf_model("llama", seed=3, vocab_size=len(vocabulary()[0]))
    path = write_tiny_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", model)
    return path, model


def _transformers_from_gguf(path):
    import torch
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tok = tf.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tok


def test_unpermute_inverts_llama_cpp_permutation(rng):
    w = rng.normal(size=(3 * 8, 5))
    np.testing.assert_array_equal(unpermute_rope_rows(permute_rows(w, 3), 3), w)


def test_logits_match_transformers_gguf_loader(tiny_gguf, rng):
    path, source = tiny_gguf
    config, params, _ = load_gguf(path)
    ref_model, _ = _transformers_from_gguf(path)
    tokens = rng.integers(0, config.vocab_size, size=(2, 9))
    mask = np.ones_like(tokens)
    mask[0, :4] = 0
    ours = np.asarray(apply(params, config, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    real = np.broadcast_to(mask[..., None], ours.shape)
    assert rel_err(ours, hf_logits(ref_model, tokens, mask), real) <= 1e-4
    # And close to the unquantised source model (only the Q8_0 embedding differs).
    assert rel_err(ours, hf_logits(source, tokens, mask), real) <= 5e-2


def test_tokenizer_matches_transformers_gguf_tokenizer(tiny_gguf):
    path, _ = tiny_gguf
    _, _, tok = load_gguf(path)
    _, ref = _transformers_from_gguf(path)
    for text in ["the cat and the hat", "There are cats!\n\nIn the  house.", "héllo wörld ✓"]:
        assert tok(text)["input_ids"] == ref(text, add_special_tokens=False)["input_ids"], text
        assert tok.decode(tok(text)["input_ids"]) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "the cat"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(chat)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids.count(2) == 1  # specials stay whole


def test_smollm_pre_tokenizer_splits_digits(tiny_gguf):
    # llama.cpp's "smollm" pre-tokenizer isolates every digit before the GPT-2 split.
    path, _ = tiny_gguf
    _, _, tok = load_gguf(path)
    assert tok.convert_ids_to_tokens(tok("in 2024")["input_ids"]) == ["in", "Ġ", "2", "0", "2", "4"]


def test_bad_gguf_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        load_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(CheckpointError, match="not a readable GGUF"):
        load_gguf(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(str(tmp_path / "nothing-here"))
    import gguf

    other = tmp_path / "qwen2.gguf"
    w = gguf.GGUFWriter(str(other), "qwen2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(CheckpointError, match="architecture='qwen2' is not supported"):
        load_gguf(other)
