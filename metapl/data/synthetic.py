"""`synthetic_domains`: a token-level preference benchmark with an analytic gold reward.

Texts are sequences of words `w0 .. w{V-1}` (see `WordTokenizer`). Everything derives from `SyntheticConfig.seed`:

- each word i has a feature vector `phi[i]` in R^k (k = feature_dim), shared by all domains;
- a shared preference direction `w0` (unit norm), and per domain d the weights `w_d = w0 + shift * eps_d`,
  eps_d ~ N(0, I/k): domains agree on average, which is the structure a general reward model can learn;
- per domain a prompt distribution over words, softmax(prompt_shift * eta_d), eta_d ~ N(0, I);
- the **gold reward** of response y to prompt x in domain d:

      r_d(x, y) = mean_t (w_d . phi[y_t]) + relevance * |{t : y_t in x}| / |y|

- preference pairs: a prompt from the domain's distribution, two responses drawn uniformly (the reference
  policy), and a Bradley-Terry "human" label, P(a preferred) = sigmoid((r_a - r_b) / label_noise)
  (label_noise = 0 labels by the gold reward exactly). gold_margin = r(chosen) - r(rejected).

Domains are named `syn000`, `syn001`, ...; the last `num_heldout` of them are the held-out (meta-test) domains,
the rest are meta-train domains. Each domain draws from its own random stream, so changing the number of
domains or pairs leaves the other domains' data unchanged.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import Sequence

import numpy as np

from metapl.config import number
from metapl.data.schemas import DataError, PreferencePair, PromptExample

_WORLD, _DOMAIN, _PROMPTS, _PAIRS, _VALIDATION = 0, 1, 2, 3, 4  # random-stream tags


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the synthetic benchmark (defaults: 64 domains, 24 held out, a minute-scale experiment on CPU)."""

    num_domains: int = number(64, ge=2)
    num_heldout: int = number(24, ge=1)
    vocab_words: int = number(32, ge=1)
    feature_dim: int = number(8, ge=1)
    shift: float = number(0.5, ge=0)
    prompt_shift: float = number(1.0, ge=0)
    relevance: float = number(0.5, ge=0)
    label_noise: float = number(0.1, ge=0)
    pairs_per_domain: int = number(64, ge=1)
    prompt_words: tuple[int, int] = number((4, 8), ge=1)
    response_words: tuple[int, int] = number((4, 8), ge=1)
    seed: int = number(0, ge=0)

    def __post_init__(self):
        if not 0 < self.num_heldout < self.num_domains:
            raise ValueError(f"num_heldout must be in (0, num_domains={self.num_domains}), got {self.num_heldout}")
        for name in ("vocab_words", "feature_dim", "pairs_per_domain"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("shift", "prompt_shift", "relevance", "label_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("prompt_words", "response_words"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")


class WordTokenizer:
    """Whitespace tokenizer over the synthetic vocabulary: id 0 = <pad>, 1 = <eos>, 2 + i = word `w{i}`."""

    pad_token_id = 0
    eos_token_id = 1
    SPECIALS = ("<pad>", "<eos>")

    def __init__(self, vocab_words: int, extra_tokens: Sequence[str] = ()):
        # extra_tokens: control tokens after the words (e.g. reward tokens for reward-conditioned SFT)
        self.words = [f"w{i}" for i in range(vocab_words)] + list(extra_tokens)
        self._ids = {w: i + len(self.SPECIALS) for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.SPECIALS) + len(self.words)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[w] for w in text.split()]
        except KeyError as e:
            raise DataError(f"word {e.args[0]!r} is not in the synthetic vocabulary (w0 .. w{len(self.words) - 1})")

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self.SPECIALS)
        return " ".join(self.words[i - n] for i in ids if i >= n)


class SyntheticDomains:
    """The benchmark defined by a `SyntheticConfig`: domains, gold reward, prompts and labelled pairs."""

    def __init__(self, config: SyntheticConfig = SyntheticConfig()):
        self.config = config
        self.tokenizer = WordTokenizer(config.vocab_words)
        world = np.random.default_rng([config.seed, _WORLD])
        k = config.feature_dim
        self.features = world.normal(size=(config.vocab_words, k)) / np.sqrt(k)  # phi [V, k]
        w0 = world.normal(size=k)
        self.shared_weights = w0 / np.linalg.norm(w0)
        self._weights: dict[str, np.ndarray] = {}

    @cached_property
    def domains(self) -> list[str]:
        return [f"syn{i:03d}" for i in range(self.config.num_domains)]

    @property
    def train_domains(self) -> list[str]:
        return self.domains[: self.config.num_domains - self.config.num_heldout]

    @property
    def heldout_domains(self) -> list[str]:
        return self.domains[self.config.num_domains - self.config.num_heldout:]

    def _index(self, domain: str) -> int:
        try:
            return self.domains.index(domain)
        except ValueError:
            raise DataError(f"unknown domain {domain!r}; synthetic domains are {self.domains[0]} .. "
                            f"{self.domains[-1]}", field="domain") from None

    def domain_weights(self, domain: str) -> np.ndarray:
        """w_d [k]: the domain's preference weights."""
        if domain not in self._weights:
            self._weights[domain] = self._draw_weights(domain)
        return self._weights[domain]

    def _draw_weights(self, domain: str) -> np.ndarray:
        rng = np.random.default_rng([self.config.seed, _DOMAIN, self._index(domain)])
        eps = rng.normal(size=self.config.feature_dim) / np.sqrt(self.config.feature_dim)
        return self.shared_weights + self.config.shift * eps

    def prompt_distribution(self, domain: str) -> np.ndarray:
        """[V] probabilities of each word in the domain's prompts."""
        rng = np.random.default_rng([self.config.seed, _DOMAIN, self._index(domain)])
        rng.normal(size=self.config.feature_dim)  # the weights' draw comes first in this stream
        z = self.config.prompt_shift * rng.normal(size=self.config.vocab_words)
        z = np.exp(z - z.max())
        return z / z.sum()

    def gold_reward(self, domain: str, prompt: str, response: str) -> float:
        """r_d(x, y) as defined in the module docstring."""
        x = self.tokenizer.encode(prompt)
        y = self.tokenizer.encode(response)
        if not y:
            raise DataError("empty response", field="response")
        n = len(WordTokenizer.SPECIALS)
        y_words = np.asarray(y) - n
        y_words = y_words[y_words < self.config.vocab_words]  # control tokens (after the words) carry no reward
        if not len(y_words):
            raise DataError("response has no words", field="response")
        y_words = self._judged_words(y_words)
        quality = float(np.mean(self.features[y_words] @ self.domain_weights(domain)))
        overlap = float(np.mean([t in set(x) for t in y_words + n]))
        return quality + self.config.relevance * overlap

    def _judged_words(self, y_words: np.ndarray) -> np.ndarray:
        """The response words [n] (ids - 2) that the gold reward reads: all of them here."""
        return y_words

    def _words(self, rng: np.random.Generator, lengths: tuple[int, int], p: np.ndarray | None) -> str:
        n = int(rng.integers(lengths[0], lengths[1] + 1))
        return " ".join(self.tokenizer.words[i] for i in rng.choice(self.config.vocab_words, size=n, p=p))

    def _prompt(self, rng: np.random.Generator, domain: str, p: np.ndarray) -> str:
        return self._words(rng, self.config.prompt_words, p)

    def _response(self, rng: np.random.Generator) -> str:
        """A response of a labelled pair (here: uniform words, like the untrained reference policy's)."""
        return self._words(rng, self.config.response_words, None)

    def prompts(self, domain: str, n: int, validation: bool = False) -> list[PromptExample]:
        """n prompts drawn from the domain's prompt distribution (a stream separate from the pairs'); with
        `validation`, from a third stream that training never reads (tuning prompts of a meta-train domain)."""
        rng = np.random.default_rng([self.config.seed, _VALIDATION if validation else _PROMPTS, self._index(domain)])
        p = self.prompt_distribution(domain)
        return [PromptExample(self._prompt(rng, domain, p), domain) for _ in range(n)]

    def pairs(self, domain: str, n: int | None = None) -> list[PreferencePair]:
        """`n` (default pairs_per_domain) labelled pairs from the domain; the first k are the same for any n >= k."""
        n = self.config.pairs_per_domain if n is None else n
        rng = np.random.default_rng([self.config.seed, _PAIRS, self._index(domain)])
        p = self.prompt_distribution(domain)
        out = []
        while len(out) < n:
            prompt = self._prompt(rng, domain, p)
            a = self._response(rng)
            b = self._response(rng)
            u = rng.random()
            if a == b:
                continue
            margin = self.gold_reward(domain, prompt, a) - self.gold_reward(domain, prompt, b)
            p_a = _bradley_terry(margin, self.config.label_noise)
            chosen, rejected = (a, b) if u < p_a else (b, a)
            out.append(PreferencePair(prompt, chosen, rejected, domain,
                                      gold_margin=margin if chosen == a else -margin))
        return out


def _bradley_terry(margin: float, temperature: float) -> float:
    if temperature == 0:
        return 1.0 if margin > 0 else (0.5 if margin == 0 else 0.0)
    return float(1.0 / (1.0 + np.exp(-margin / temperature)))
