"""Reward tokens of reward-conditioned SFT: equal-mass bins of a standard normal, tokens, and prompt templates
that render and parse back."""

import numpy as np
import pytest

from metapl.data.reward_tokens import (
    DEFAULT_REWARD_TEMPLATE, normal_bin_edges, parse_reward_prompt, render_reward_prompt, reward_bin, reward_token,
)


def test_reward_bins_tokens_and_templates():
    np.testing.assert_allclose(normal_bin_edges(4), [-0.6744897501960817, 0.0, 0.6744897501960817], rtol=1e-12)
    assert [reward_bin(z) for z in (-3.0, -0.5, 0.0, 0.2, 0.7, 9.0)] == [0, 1, 2, 2, 3, 3]
    assert reward_bin(0.5, [-1.0, 1.0]) == 1 and reward_bin(1.0, [-1.0, 1.0]) == 2
    assert reward_token(1.5) == "<|reward_3|>"
    assert reward_token(-2.0, 5, token="Score: {bin}/{top}") == "Score: 0/4"
    assert render_reward_prompt("Tell me.", 3) == "Tell me. <|reward_3|>"
    assert render_reward_prompt("Tell me.", -0.1) == "Tell me. <|reward_1|>"  # a float is a z-score
    assert render_reward_prompt("Tell me.", np.int64(2)) == "Tell me. <|reward_2|>"
    for template in (DEFAULT_REWARD_TEMPLATE, "Score: {bin}/{top}\n{prompt}", "[{bin}] {prompt} [{bin}]"):
        for b in range(6):
            text = render_reward_prompt("a {weird}\nprompt 3", b, template, bins=6)
            assert parse_reward_prompt(text, template, bins=6) == ("a {weird}\nprompt 3", b)
    with pytest.raises(ValueError):
        parse_reward_prompt("no token here", DEFAULT_REWARD_TEMPLATE)
    with pytest.raises(ValueError):
        parse_reward_prompt("x <|reward_4|>", DEFAULT_REWARD_TEMPLATE)  # 4 bins: 0..3
    with pytest.raises(ValueError):
        render_reward_prompt("x", 4)
    with pytest.raises(ValueError):
        reward_bin(float("nan"))
    with pytest.raises(ValueError):
        reward_bin(0.0, [1.0, 0.0])
