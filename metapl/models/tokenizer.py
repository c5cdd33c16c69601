"""Tokenizers, always from local files: a Hugging Face directory, or the vocabulary inside a GGUF file.

Everything here returns a `transformers.PreTrainedTokenizerFast`, so encoding, decoding and chat templates
behave as users expect from transformers; nothing is ever fetched from a hub.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# llama.cpp's GGUF token types.
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4

# Pre-tokenizers named by `tokenizer.ggml.pre` that we rebuild. "smollm" (like starcoder) splits every digit
# on its own before the GPT-2 split; "gpt2" is the plain GPT-2 split.
_DIGIT_SPLITTING_PRE = {"smollm", "starcoder", "refact", "codeshell"}
_PLAIN_GPT2_PRE = {"gpt2", "default", "mpt", "olmo"}


class TokenizerError(ValueError):
    """Tokenizer files are missing or describe something we cannot rebuild faithfully."""


def load_hf_tokenizer(path: str | os.PathLike):
    """The tokenizer saved in a Hugging Face model directory (tokenizer.json etc.), offline."""
    from transformers import AutoTokenizer

    directory = Path(path)
    if not any((directory / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        raise TokenizerError(f"{directory}: no tokenizer files (tokenizer.json, vocab.json or tokenizer.model)")
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def tokenizer_from_gguf_metadata(meta: dict, source: str = "gguf"):
    """A byte-level BPE tokenizer rebuilt from GGUF `tokenizer.ggml.*` metadata (vocab, merges, specials).

    meta: GGUF key -> decoded value (lists for arrays). Supports `tokenizer.ggml.model == "gpt2"` with the
    pre-tokenizers listed in `_DIGIT_SPLITTING_PRE` and `_PLAIN_GPT2_PRE`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerError(f"{source}: tokenizer.ggml.model={kind!r}; only byte-level BPE ('gpt2') is supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _DIGIT_SPLITTING_PRE | _PLAIN_GPT2_PRE:
        raise TokenizerError(f"{source}: tokenizer.ggml.pre={pre!r} is not supported "
                             f"(supported: {', '.join(sorted(_DIGIT_SPLITTING_PRE | _PLAIN_GPT2_PRE))})")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise TokenizerError(f"{source}: the vocabulary has duplicate token strings")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
                                          use_regex=True)
    if pre in _DIGIT_SPLITTING_PRE:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == _GGUF_CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == _GGUF_USER_DEFINED])

    def special(key):
        idx = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    bos = special("bos")
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=special("eos"),
        unk_token=special("unknown"),
        pad_token=special("padding"),
        chat_template=meta.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
    )
