"""SRPO data: the six-sequence builder (contexts, responses, masks, determinism) and `revise` chaining (a mocked
sampler, and a tiny model against chained `generate_text`)."""

import jax
import numpy as np
import pytest

import metapl.data.srpo as srpo_module
from metapl.data.batching import SequenceShape
from metapl.data.schemas import PreferencePair
from metapl.data.srpo import DEFAULT_REVISION_TEMPLATE, SRPO_SEQUENCES, revise, revision_prompt, srpo_sequences
from metapl.models import SamplingConfig, generate_text, init_params, tiny


def _byte_encode(text):
    return list(text.encode("utf-8"))


EOS = 256
SHORT = "{prompt}|{response}|"  # a compact revision template


def test_srpo_sequences_hold_the_six_contexts_and_responses():
    pairs = [PreferencePair("Name a fruit.", "Apple.", "Rock.", "d"), PreferencePair("Hi?", "Hello!", "Go.", "d")]
    shape = SequenceShape(max_prompt_tokens=128, max_response_tokens=16)
    batch = srpo_sequences(pairs, _byte_encode, shape, eos_id=EOS, pad_id=0)
    assert revision_prompt("Hi?", "Go.") == DEFAULT_REVISION_TEMPLATE.format(prompt="Hi?", response="Go.")
    assert "Hi?" in revision_prompt("Hi?", "Go.") and "Go." in revision_prompt("Hi?", "Go.")
    lengths = {seqs.tokens.shape for seqs in batch}
    assert len(lengths) == 1  # one padded length for all six
    for i, p in enumerate(pairs):
        want = {
            "chosen": (p.prompt, p.chosen), "rejected": (p.prompt, p.rejected),
            "chosen_given_rejected": (revision_prompt(p.prompt, p.rejected), p.chosen),
            "rejected_given_rejected": (revision_prompt(p.prompt, p.rejected), p.rejected),
            "chosen_given_chosen": (revision_prompt(p.prompt, p.chosen), p.chosen),
            "rejected_given_chosen": (revision_prompt(p.prompt, p.chosen), p.rejected),
        }
        for name, (ctx, y) in want.items():
            seqs = getattr(batch, name)
            ids = _byte_encode(ctx) + _byte_encode(y) + [EOS]
            row = seqs.tokens[i]
            np.testing.assert_array_equal(row[: len(ids)], ids)
            assert not row[len(ids):].any() and seqs.attention_mask[i].sum() == len(ids)
            np.testing.assert_array_equal(np.flatnonzero(seqs.response_mask[i]),
                                          np.arange(len(_byte_encode(ctx)), len(ids)))
    arrays = batch.arrays()
    assert sorted(arrays) == sorted(f"{n}_{f}" for n in SRPO_SEQUENCES
                                    for f in ("tokens", "attention_mask", "response_mask"))
    again = srpo_sequences(pairs, _byte_encode, shape, eos_id=EOS, pad_id=0).arrays()
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays)
    with pytest.raises(ValueError, match="template"):
        revision_prompt("x", "y", "{prompt} only")


# ------------------------------------------------------------------------------------------------- inference


def test_revise_chains_generation_and_revisions_with_a_mocked_sampler(monkeypatch):
    calls = []

    def fake_generate_text(params, config, tokenizer, prompts, key, sampling, *, chat=False, lora=None):
        calls.append((list(prompts), np.asarray(jax.random.key_data(key)).tolist()))
        return [f"y{len(calls) - 1}[{len(p)}]" for p in prompts]

    monkeypatch.setattr(srpo_module, "generate_text", fake_generate_text)
    key = jax.random.key(5)
    chains = revise(None, None, None, ["p1", "prompt 2"], 2, SamplingConfig(max_new_tokens=3), key, template=SHORT)
    assert chains == [["y0[2]", "y1[9]", "y2[9]"], ["y0[8]", "y1[15]", "y2[16]"]]
    assert [c[0] for c in calls] == [["p1", "prompt 2"], ["p1|y0[2]|", "prompt 2|y0[8]|"],
                                     ["p1|y1[9]|", "prompt 2|y1[15]|"]]
    keys = [c[1] for c in calls]
    assert keys == [np.asarray(jax.random.key_data(jax.random.fold_in(key, i))).tolist() for i in range(3)]
    assert revise(None, None, None, ["p"], 0, SamplingConfig(), key) == [["y3[1]"]]


def test_revise_on_a_tiny_model_equals_chained_generate_text():
    from tests.gguf_fixture import tiny_tokenizer

    tok = tiny_tokenizer()
    config = tiny("llama", vocab_size=len(tok), num_layers=1)
    params = init_params(config, jax.random.key(0))
    sampling = SamplingConfig(max_new_tokens=3, temperature=0.0)
    key = jax.random.key(1)
    prompts = ["the cat", "and"]
    template = "{prompt} then {response} and"
    chains = revise(params, config, tok, prompts, 2, sampling, key, template=template)
    assert [len(c) for c in chains] == [3, 3]
    y = generate_text(params, config, tok, prompts, jax.random.fold_in(key, 0), sampling)
    assert [c[0] for c in chains] == y
    for i in (1, 2):
        y = generate_text(params, config, tok, [revision_prompt(x, r, template) for x, r in zip(prompts, y)],
                          jax.random.fold_in(key, i), sampling)
        assert [c[i] for c in chains] == y
