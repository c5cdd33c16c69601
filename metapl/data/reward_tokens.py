"""Reward tokens for reward-conditioned ("Decision Transformer") SFT (Hu et al., arXiv 2308.12050).

A sample's reward, as a z-score within its prompt, is quantised into one of K bins, and the bin is written into
the prompt as a token: the model learns π(y | x ⊕ reward-token(z)); at inference it is conditioned on a high
target bin (usually the top one, K − 1).

    reward_bin(z, bins)                          bin index in 0 .. K−1 (bins: K equal-mass bins of a standard
                                                 normal, or the interior edges)
    render_reward_prompt(x, z_or_bin, template)  "x <|reward_3|>" (the default template)
    parse_reward_prompt(text, template)          (x, bin), the inverse

Batches of such prompts are built by `metapl.data.sft_arrays.reward_conditioned_arrays`.
"""

from __future__ import annotations

import bisect
import itertools
import math
import numbers
import re
import statistics
from typing import Sequence

__all__ = [
    "DEFAULT_BINS", "DEFAULT_REWARD_TEMPLATE", "DEFAULT_REWARD_TOKEN", "normal_bin_edges", "parse_reward_prompt",
    "render_reward_prompt", "reward_bin", "reward_token",
]

DEFAULT_REWARD_TOKEN = "<|reward_{bin}|>"
# The token goes *after* the prompt, right before the response: `encode_sequence` truncates long prompts from
# the left, which would cut a leading token; at the end it always survives and sits next to what it conditions.
DEFAULT_REWARD_TEMPLATE = "{prompt} " + DEFAULT_REWARD_TOKEN
DEFAULT_BINS = 4


def normal_bin_edges(num_bins: int) -> tuple[float, ...]:
    """The num_bins − 1 interior edges that cut a standard normal into equal-mass bins (the quantiles
    Φ⁻¹(k / num_bins)): z-scores of a prompt's samples then fill the bins about equally. 4 bins: ±0.674, 0."""
    if num_bins < 2:
        raise ValueError(f"need at least 2 bins, got {num_bins}")
    nd = statistics.NormalDist()
    return tuple(nd.inv_cdf(k / num_bins) for k in range(1, num_bins))


def _edges(bins: int | Sequence[float]) -> tuple[float, ...]:
    if isinstance(bins, numbers.Integral):
        return normal_bin_edges(int(bins))
    edges = tuple(float(e) for e in bins)
    if not edges or any(not math.isfinite(e) for e in edges) or any(a >= b for a, b in itertools.pairwise(edges)):
        raise ValueError(f"bin edges must be a non-empty, strictly increasing list of finite numbers, got {bins}")
    return edges


def reward_bin(z: float, bins: int | Sequence[float] = DEFAULT_BINS) -> int:
    """The bin of a z-score: the number of edges ≤ z, in 0 .. K−1 (K = number of bins).

    bins: K (equal-mass bins of a standard normal, `normal_bin_edges(K)`) or the increasing interior edges.
    A z exactly on an edge goes to the upper bin.
    """
    if not math.isfinite(z):
        raise ValueError(f"z must be finite, got {z}")
    return bisect.bisect_right(_edges(bins), float(z))


def _num_bins(bins: int | Sequence[float]) -> int:
    return len(_edges(bins)) + 1


def reward_token(z: float, bins: int | Sequence[float] = DEFAULT_BINS, token: str = DEFAULT_REWARD_TOKEN) -> str:
    """The reward token of a z-score, e.g. "<|reward_3|>". `token` may use {bin} and {top} (= K − 1), e.g.
    "Score: {bin}/{top}"."""
    return token.format(bin=reward_bin(z, bins), top=_num_bins(bins) - 1)


def render_reward_prompt(
    prompt: str,
    z_or_bin: float | int,
    template: str = DEFAULT_REWARD_TEMPLATE,
    *,
    bins: int | Sequence[float] = DEFAULT_BINS,
) -> str:
    """The conditioned prompt: `template` with {prompt}, {bin} and {top} (= K − 1) filled in.

    z_or_bin: an integer (Python or numpy) is a bin index in 0 .. K−1 — what inference uses to condition on
    a chosen target, usually the top bin K − 1; a float is a z-score, quantised with `bins` (`reward_bin`).
    """
    k = _num_bins(bins)
    if isinstance(z_or_bin, numbers.Integral) and not isinstance(z_or_bin, bool):
        b = int(z_or_bin)
        if not 0 <= b < k:
            raise ValueError(f"bin {b} is outside 0 .. {k - 1}")
    elif isinstance(z_or_bin, numbers.Real) and not isinstance(z_or_bin, bool):
        b = reward_bin(float(z_or_bin), bins)
    else:
        raise TypeError(f"z_or_bin must be an int bin or a float z-score, got {type(z_or_bin).__name__}")
    if "{prompt}" not in template or "{bin}" not in template:
        raise ValueError(f"the template must contain {{prompt}} and {{bin}}, got {template!r}")
    return template.format(prompt=prompt, bin=b, top=k - 1)


def parse_reward_prompt(
    text: str, template: str = DEFAULT_REWARD_TEMPLATE, *, bins: int | Sequence[float] = DEFAULT_BINS
) -> tuple[str, int]:
    """The inverse of `render_reward_prompt`: (prompt, bin) from a conditioned prompt. Raises ValueError if
    `text` does not follow the template."""
    k = _num_bins(bins)
    pattern, seen = [], set()
    for i, part in enumerate(re.split(r"\{(prompt|bin|top)\}", template)):
        if i % 2 == 0:
            pattern.append(re.escape(part))
        elif part == "top":
            pattern.append(re.escape(str(k - 1)))
        elif part in seen:
            pattern.append(f"(?P={part})")
        else:
            seen.add(part)
            pattern.append("(?P<prompt>.*)" if part == "prompt" else r"(?P<bin>\d+)")
    m = re.fullmatch("".join(pattern), text, flags=re.DOTALL)
    if m is None or int(m["bin"]) >= k:
        raise ValueError(f"{text!r} does not follow the reward template {template!r} with {k} bins")
    return m["prompt"], int(m["bin"])
