"""Padded test batches built from explicit sequences."""

import numpy as np


def pad_rows(seqs, length: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Sequences padded with 0 on `side` ("left" or "right") to `length`: (tokens [B, length] int32, mask bool)."""
    tokens = np.zeros((len(seqs), length), np.int32)
    mask = np.zeros((len(seqs), length), bool)
    for i, s in enumerate(seqs):
        cols = slice(length - len(s), length) if side == "left" else slice(0, len(s))
        tokens[i, cols] = s
        mask[i, cols] = True
    return tokens, mask
