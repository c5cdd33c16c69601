"""`mechanism_domains`: `synthetic_domains` with the mechanisms a meta-learned reward model could exploit, each
behind a knob (`MechanismConfig`); with every knob off it generates exactly `synthetic_domains`' data.

A. **Domain attributes visible in the prompt** (`attributes` = m > 0). Domain d has attribute values
   a_d in {-1, -1/2, 0, 1/2, 1}^m. They set its preference weights,

       w_d = w0 + shift * eps_d + attribute_strength * U a_d        (U [k, m]: orthonormal columns)

   and every prompt of the domain starts with descriptor tokens that spell them: for attribute j,
   `descriptor_slots` tokens of which D (a_j + 1) / 2 are `a{j}+` and the rest `a{j}-` (D = descriptor_slots).
   Meta-train domains take the inner values {-1/2, 0, 1/2} in the combinations whose value indices do not sum to
   0 mod 3. Held-out domains are of two kinds: *interpolation* (the excluded combinations: every value seen in
   training, the combination never) and *extrapolation* (one attribute at +-1, a value no training prompt
   shows). `heldout_kind(domain)` says which.
B. **Preference data off the policy's distribution** (`behaviour_shift` = s > 0): the responses of the labelled
   pairs are drawn from a behaviour policy, word i with probability softmax(s * zeta)_i (zeta ~ N(0, I), one draw
   for the benchmark), instead of uniformly like the untrained reference policy's samples. Larger s concentrates
   the pairs on fewer words, so the words the policy can move to are ones the pairs rarely contrast.
C. **Scarce feedback** is `synthetic.pairs_per_domain` (and `num_domains`): no knob of its own.
D. **A suffix-dependent oracle** (`suffix_words` = k > 0): the gold reward reads only the response's last k
   words (both its terms: quality and overlap with the prompt); the words before them carry no reward. Pairs
   that share a prefix (preference trees) then differ only where the reward is.

The gold reward is `synthetic_domains`' with w_d as above; descriptor tokens in a response carry no reward.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from metapl.config import number
from metapl.data.schemas import DataError
from metapl.data.synthetic import SyntheticConfig, SyntheticDomains, WordTokenizer

_MECHANISM = 10  # random-stream tag (the synthetic streams are 0-4)
_ATTRIBUTE_AXES, _BEHAVIOUR = 0, 1

INNER_VALUES = (-0.5, 0.0, 0.5)  # attribute values of the meta-train domains (and of interpolation domains)


@dataclasses.dataclass(frozen=True)
class MechanismConfig:
    """The mechanism knobs (all off by default: the benchmark is then `synthetic_domains`)."""

    attributes: int = number(0, ge=0)
    attribute_strength: float = number(1.0, ge=0)
    descriptor_slots: int = number(4, ge=4)
    behaviour_shift: float = number(0.0, ge=0)
    suffix_words: int = number(0, ge=0)

    def __post_init__(self):
        if not isinstance(self.attributes, int) or self.attributes < 0 or self.attributes == 1:
            raise ValueError(f"attributes must be 0 (off) or an integer >= 2 (one attribute has no unseen "
                             f"combinations to interpolate), got {self.attributes!r}")
        if self.descriptor_slots < 4 or self.descriptor_slots % 4:
            raise ValueError(f"descriptor_slots must be a positive multiple of 4 (so that +-1/2 is spelt exactly), "
                             f"got {self.descriptor_slots}")
        if not isinstance(self.suffix_words, int) or self.suffix_words < 0:
            raise ValueError(f"suffix_words must be 0 (off) or a positive integer, got {self.suffix_words!r}")
        for name in ("attribute_strength", "behaviour_shift"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value}")


def attribute_combinations(m: int) -> tuple[list[tuple[float, ...]], list[tuple[float, ...]]]:
    """(seen, excluded) combinations of INNER_VALUES over m attributes: excluded are those whose value indices sum
    to 0 mod 3, so that every single value stays seen (each appears in 2/3 of the seen combinations)."""
    seen, excluded = [], []
    for idx in itertools.product(range(len(INNER_VALUES)), repeat=m):
        (excluded if sum(idx) % 3 == 0 else seen).append(tuple(INNER_VALUES[i] for i in idx))
    return seen, excluded


class MechanismDomains(SyntheticDomains):
    """The benchmark defined by a `SyntheticConfig` and a `MechanismConfig` (see the module docstring)."""

    def __init__(self, config: SyntheticConfig = SyntheticConfig(), mechanisms: MechanismConfig = MechanismConfig()):
        super().__init__(config)
        self.mechanisms = m = mechanisms
        self.descriptor_tokens = [f"a{j}{sign}" for j in range(m.attributes) for sign in "+-"]
        self.tokenizer = WordTokenizer(config.vocab_words, self.descriptor_tokens)
        rng = np.random.default_rng([config.seed, _MECHANISM, _ATTRIBUTE_AXES])
        if m.attributes > config.feature_dim:
            raise ValueError(f"attributes = {m.attributes} needs feature_dim >= {m.attributes}, got "
                             f"{config.feature_dim}")
        axes = rng.normal(size=(config.feature_dim, max(m.attributes, 1)))
        self.attribute_axes = np.linalg.qr(axes)[0][:, : m.attributes]  # U [k, m]
        zeta = np.random.default_rng([config.seed, _MECHANISM, _BEHAVIOUR]).normal(size=config.vocab_words)
        z = np.exp(m.behaviour_shift * zeta - np.max(m.behaviour_shift * zeta))
        self.behaviour_distribution = None if m.behaviour_shift == 0 else z / z.sum()  # [V] or None (uniform)
        self._attributes = self._assign_attributes() if m.attributes else {}

    # ------------------------------------------------------------------------------------------- attributes

    def _assign_attributes(self) -> dict[str, tuple[tuple[float, ...], str]]:
        m = self.mechanisms.attributes
        seen, excluded = attribute_combinations(m)
        out = {d: (seen[i % len(seen)], "train") for i, d in enumerate(self.train_domains)}
        heldout = self.heldout_domains
        n_interp = (len(heldout) + 1) // 2
        for i, d in enumerate(heldout[:n_interp]):
            out[d] = (excluded[i % len(excluded)], "interpolation")
        inner = list(itertools.product(INNER_VALUES, repeat=m))
        for i, d in enumerate(heldout[n_interp:]):
            values = list(inner[(7 * i) % len(inner)])
            values[i % m] = 1.0 if (i // m) % 2 == 0 else -1.0
            out[d] = (tuple(values), "extrapolation")
        return out

    def domain_attributes(self, domain: str) -> np.ndarray:
        """a_d [m] (empty when the attribute mechanism is off)."""
        self._index(domain)
        return np.asarray(self._attributes[domain][0] if self._attributes else (), dtype=float)

    def heldout_kind(self, domain: str) -> str | None:
        """"interpolation" or "extrapolation" for a held-out domain with attributes on, "train" for a meta-train
        domain, None when the attribute mechanism is off."""
        self._index(domain)
        return self._attributes[domain][1] if self._attributes else None

    def descriptor(self, domain: str) -> str:
        """The descriptor tokens that start every prompt of `domain` ("" with attributes off)."""
        d = self.mechanisms.descriptor_slots
        words = []
        for j, value in enumerate(self.domain_attributes(domain)):
            hi = int(round(d * (value + 1) / 2))
            words += [f"a{j}+"] * hi + [f"a{j}-"] * (d - hi)
        return " ".join(words)

    def _draw_weights(self, domain: str) -> np.ndarray:
        w = super()._draw_weights(domain)
        if not self._attributes:
            return w
        return w + self.mechanisms.attribute_strength * self.attribute_axes @ self.domain_attributes(domain)

    def _judged_words(self, y_words: np.ndarray) -> np.ndarray:
        k = self.mechanisms.suffix_words
        return y_words[-k:] if k else y_words

    # ---------------------------------------------------------------------------------------------- texts

    def _prompt(self, rng: np.random.Generator, domain: str, p: np.ndarray) -> str:
        words = super()._prompt(rng, domain, p)
        prefix = self.descriptor(domain)
        return f"{prefix} {words}" if prefix else words

    def _response(self, rng: np.random.Generator) -> str:
        return self._words(rng, self.config.response_words, self.behaviour_distribution)

    def prompt_tokens(self) -> int:
        """The longest prompt in tokens (descriptors + words)."""
        return self.mechanisms.attributes * self.mechanisms.descriptor_slots + self.config.prompt_words[1]

    def check_prompt_length(self, max_prompt_tokens: int) -> None:
        if self.prompt_tokens() > max_prompt_tokens:
            raise DataError(f"data.max_prompt_tokens = {max_prompt_tokens} would cut prompts of up to "
                            f"{self.prompt_tokens()} tokens ({self.mechanisms.attributes} attributes x "
                            f"{self.mechanisms.descriptor_slots} descriptor slots + {self.config.prompt_words[1]} "
                            "words); raise it", field="max_prompt_tokens")


__all__ = ["INNER_VALUES", "MechanismConfig", "MechanismDomains", "attribute_combinations"]
