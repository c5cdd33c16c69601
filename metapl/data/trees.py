"""Preference trees (Qiu et al., "Reward Generalization in RLHF: A Topological Perspective", arXiv 2402.10184):
the responses to one prompt are grown as a prefix tree, and leaves that share prefixes are compared.

    config = TreeConfig(depth=3, branching=2, segment_tokens=32, pairs_per_tree=8)
    result = generate_trees(params, model_config, tokenizer, prompts, score, config)
    write_jsonl("trees.jsonl", result.trees)           # PreferenceTree records; read back with read_jsonl
    pairs = [p for t in result.trees for p in tree_to_pairs(t)]   # for the Bradley-Terry trainer
    print(result.stats.summary())

Growing (`grow_trees`). Breadth first: at level d every open node of every prompt's tree gets `branching[d]`
children, all of a level's children across prompts are sampled together in `generate` calls of exactly
`batch_size` rows (the last call padded with dummy rows), so the sampler compiles once per power-of-two context
length (`bucket`). A child continues its parent's *token ids* (prompt + path so far; never re-tokenised text)
with up to `segment_tokens` tokens at that level's temperature and is cut at the first separator token. A child
that stops at EOS is a finished leaf and is not expanded; other nodes at depth `depth` are leaves too.

Text. A node's text is what its tokens add to the decoded response: decode(path + segment) minus
decode(path), so a leaf's response (the concatenation of the texts on its path, `PreferenceTree.response`)
is exactly the decoded token sequence. Tokenizers whose decoding is not prefix-stable (a byte-level token
cutting a UTF-8 character in half) are handled by trimming a length-cut segment back to a whole character
before it is expanded, and by dropping (and counting) any child whose text would not extend its parent's.
Leaves whose response is blank (only special tokens) are pruned and counted.

Comparing (`compare_leaves`). Leaf pairs with identical responses are never compared (counted as
`identical_leaf_pairs`); the pairs are selected by `TreeConfig.pair_selection`, each leaf in them is scored
once by `score(domain, prompt, response)` (gold judge or reward model), and each pair is labelled with a
Bradley-Terry draw, P(a preferred) = sigmoid((score_a - score_b) / label_noise) (`bradley_terry_label`);
`gold_margin` = score(chosen) - score(rejected), `shared_prefix` = number of nodes the two root paths share.

Determinism. Everything derives from `TreeConfig.seed`: the sampling key of level d, call j is
fold_in(fold_in(key(seed), d), j), and tree i's pair selection and labels draw from numpy streams
[seed, tag, i]. The same prompts, model, config (including batch_size) and seed give the same trees.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import numpy as np

from metapl.config import number
from metapl.data.judges import bradley_terry_label
from metapl.data.schemas import (
    LeafComparison,
    PreferencePair,
    PreferenceTree,
    PromptExample,
    TreeNode,
)

__all__ = [
    "PAIR_SELECTIONS",
    "GrownNode",
    "GrownTree",
    "TokenCodec",
    "TreeConfig",
    "TreeResult",
    "TreeStats",
    "codec_for",
    "compare_leaves",
    "generate_trees",
    "grow_trees",
    "select_pairs",
    "tree_to_pairs",
]

PAIR_SELECTIONS = ("stratified", "uniform", "all")
_SELECT, _LABEL = 1, 2  # numpy random-stream tags

Score = Callable[[str, str, str], float]


@dataclasses.dataclass(frozen=True)
class TreeConfig:
    """How to grow, compare and label one tree per prompt.

    depth: number of segments on the longest root path (D); leaves sit at depth <= D.
    branching: children per node at each level, an int (all levels) or a tuple of `depth` ints; a tree has at
        most branching[0] * ... * branching[D-1] leaves.
    segment_tokens: the most tokens a segment (node) adds.
    separators: tokens that end a segment (kept in its text). Ints are token ids; a string matches every token
        whose decoded text ends with it at a word boundary, ignoring trailing whitespace ("." matches ".", " ."
        and ".\\n"; "w3" matches "w3" but not "w13"); a whitespace-only string ("\\n") matches tokens that contain
        it. Every string must match at least one token. () cuts segments by length (and EOS) only.
    temperatures: sampling temperature per level: a float (every level), a tuple of `depth` floats, or None for
        the default schedule rising linearly from 0.7 at level 1 to 1.0 at level D. Why rising: a level-d
        segment is shared by every leaf below it, so a bad early sample spoils a whole subtree, and the trunk
        should be typical text (cooler); the deepest segments are what sibling leaves differ in, and the
        comparisons between leaves with long shared prefixes (the tree's low-variance signal) are only useful
        if siblings do diverge, so the last level samples at the model's own temperature, 1.0. 0 is greedy
        (siblings would all be identical).
    top_k, top_p: sampling filters (0 and 1 disable them).
    pairs_per_tree: how many leaf pairs to compare per tree (fewer if fewer eligible pairs exist); None: all.
    pair_selection: which leaf pairs (leaves with identical responses are never paired):
        "stratified" (default) groups eligible pairs by shared-prefix length and takes them round-robin from
            the longest shared prefix down, a seeded random pair from each group per round: every shared-prefix
            depth present is covered once pairs_per_tree >= the number of depths, and when pairs are scarce the
            long-shared-prefix pairs (the ones a chain of independent samples cannot give) come first;
        "uniform": a seeded uniform sample of pairs_per_tree eligible pairs (the independent-pairs baseline);
        "all": every eligible pair, ignoring pairs_per_tree.
    label_noise: Bradley-Terry temperature in the judge's score units; 0 labels by the higher score (a tie is
        a fair coin).
    batch_size: rows per `generate` call (one compiled batch shape).
    seed: sampling key, pair selection and labels.
    """

    depth: int = number(3, ge=1)
    branching: int | tuple[int, ...] = number(2, ge=1)
    segment_tokens: int = number(32, ge=1)
    separators: tuple[int | str, ...] = (".", "!", "?", "\n")
    temperatures: float | tuple[float, ...] | None = number(None, ge=0)
    top_k: int = number(0, ge=0)
    top_p: float = number(1.0, gt=0, le=1)
    pairs_per_tree: int | None = number(8, ge=1)
    pair_selection: str = "stratified"
    label_noise: float = number(0.1, ge=0)
    batch_size: int = number(16, ge=1)
    seed: int = number(0, ge=0)

    def __post_init__(self):
        for name in ("branching", "separators", "temperatures"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        for name in ("depth", "segment_tokens", "batch_size"):
            if _bad_int(getattr(self, name), 1):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        b = self.branchings  # validates the length
        if any(_bad_int(x, 1) for x in b):
            raise ValueError(f"branching must be integers >= 1, got {self.branching!r}")
        if math.prod(b) < 2:
            raise ValueError(f"branching {self.branching!r} gives a single leaf; a tree needs >= 2 leaves to compare")
        if any(not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0 for t in self.temperature_schedule):
            raise ValueError(f"temperatures must be finite and >= 0, got {self.temperatures!r}")
        for s in self.separators:
            if isinstance(s, bool) or not isinstance(s, (int, str)) or s == "":
                raise ValueError(f"separators must be token ids or non-empty strings, got {s!r}")
        if _bad_int(self.top_k, 0):
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.pairs_per_tree is not None and _bad_int(self.pairs_per_tree, 1):
            raise ValueError(f"pairs_per_tree must be an integer >= 1 or None, got {self.pairs_per_tree!r}")
        if self.pair_selection not in PAIR_SELECTIONS:
            raise ValueError(f"pair_selection must be one of {', '.join(PAIR_SELECTIONS)}; "
                             f"got {self.pair_selection!r}")
        if not math.isfinite(self.label_noise) or self.label_noise < 0:
            raise ValueError(f"label_noise must be finite and >= 0, got {self.label_noise!r}")

    @property
    def branchings(self) -> tuple[int, ...]:
        """Children per node at levels 1..depth."""
        return _per_level(self.branching, self.depth, "branching")

    @property
    def temperature_schedule(self) -> tuple[float, ...]:
        """Sampling temperature at levels 1..depth (the default: 0.7 rising linearly to 1.0)."""
        if self.temperatures is None:
            d = self.depth
            return tuple(1.0 if d == 1 else round(0.7 + 0.3 * i / (d - 1), 6) for i in range(d))
        return tuple(float(t) for t in _per_level(self.temperatures, self.depth, "temperatures"))

    def max_nodes(self) -> int:
        """The most nodes a tree can have: sum over levels of the product of branchings down to it."""
        return sum(math.prod(self.branchings[:d + 1]) for d in range(self.depth))


def _bad_int(x, minimum: int) -> bool:
    return isinstance(x, bool) or not isinstance(x, int) or x < minimum


def _per_level(value, depth: int, name: str) -> tuple:
    if isinstance(value, tuple):
        if len(value) != depth:
            raise ValueError(f"{name} has {len(value)} entries but depth is {depth} (one per level)")
        return value
    return (value,) * depth


# --------------------------------------------------------------------------------------------------- tokens


@dataclasses.dataclass(frozen=True)
class TokenCodec:
    """The token-level view of a tokenizer that tree growing needs.

    encode: prompt text -> ids as the model expects them (with BOS / chat template where the tokenizer adds them).
    decode: generated ids -> text (stop tokens are removed before decoding).
    token_texts: () -> the decoded text of every id, for resolving string separators.
    """

    encode: Callable[[str], list[int]]
    decode: Callable[[Sequence[int]], str]
    eos_ids: tuple[int, ...]
    pad_id: int
    vocab_size: int
    token_texts: Callable[[], list[str]]

    def separator_ids(self, separators: Sequence[int | str]) -> tuple[int, ...]:
        """Token ids that end a segment (see `TreeConfig.separators` for how strings match)."""
        ids, texts = set(), None
        for s in separators:
            if isinstance(s, str):
                texts = self.token_texts() if texts is None else texts
                found = [i for i, t in enumerate(texts) if _ends_with_separator(t, s)]
                if not found:
                    raise ValueError(f"separator {s!r} matches no token of the tokenizer; pass token ids, strings "
                                     "from its vocabulary, or separators=() to cut segments by length only")
                ids.update(found)
            else:
                if not 0 <= s < self.vocab_size:
                    raise ValueError(f"separator id {s} is outside the vocabulary (0 .. {self.vocab_size - 1})")
                ids.add(int(s))
        return tuple(sorted(ids))


def _ends_with_separator(token_text: str, sep: str) -> bool:
    if not sep.strip():
        return sep in token_text
    text = token_text.rstrip()
    if not text.endswith(sep):
        return False
    before = text[: len(text) - len(sep)]
    return not (sep[0].isalnum() and before and before[-1].isalnum())


def codec_for(tokenizer, *, chat: bool = False) -> TokenCodec:
    """A `TokenCodec` for a Hugging Face tokenizer (prompts encoded as `encode_prompts` does; stop ids from
    `default_stop_ids`) or for anything with `encode`/`decode`/`eos_token_id` such as `WordTokenizer`.
    A `TokenCodec` is returned as is."""
    if isinstance(tokenizer, TokenCodec):
        return tokenizer
    if hasattr(tokenizer, "batch_decode") and callable(tokenizer):
        return _hf_codec(tokenizer, chat)
    if chat:
        raise ValueError("chat=True needs a Hugging Face tokenizer with a chat template")
    for attr in ("encode", "decode", "eos_token_id"):
        if not hasattr(tokenizer, attr):
            raise TypeError(f"{type(tokenizer).__name__} has no {attr!r}; wrap it in a TokenCodec")
    vocab = int(getattr(tokenizer, "vocab_size", None) or len(tokenizer))
    pad = getattr(tokenizer, "pad_token_id", None)
    return TokenCodec(
        encode=lambda text: list(tokenizer.encode(text)),
        decode=lambda ids: tokenizer.decode(list(ids)),
        eos_ids=(int(tokenizer.eos_token_id),),
        pad_id=0 if pad is None else int(pad),
        vocab_size=vocab,
        token_texts=lambda: [tokenizer.decode([i]) for i in range(vocab)],
    )


def _hf_codec(tokenizer, chat: bool) -> TokenCodec:
    from metapl.models.sampling import default_stop_ids

    def encode(text: str) -> list[int]:
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=not chat)["input_ids"])

    def decode(ids: Sequence[int]) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id
    return TokenCodec(
        encode=encode, decode=decode, eos_ids=default_stop_ids(tokenizer), pad_id=0 if pad is None else int(pad),
        vocab_size=vocab,
        token_texts=lambda: tokenizer.batch_decode([[i] for i in range(vocab)], skip_special_tokens=False,
                                                   clean_up_tokenization_spaces=False),
    )


# --------------------------------------------------------------------------------------------------- growing


@dataclasses.dataclass(frozen=True)
class GrownNode:
    """parent (-1: hangs off the prompt), depth (1 = first segment), the segment's tokens as sampled (without
    the stop token), its text, and whether it stopped at EOS (then it is never expanded)."""

    parent: int
    depth: int
    tokens: tuple[int, ...]
    text: str
    ended: bool


@dataclasses.dataclass(frozen=True)
class GrownTree:
    """One prompt's tree before comparison: nodes in breadth-first order (a parent precedes its children)."""

    prompt: str
    domain: str
    nodes: tuple[GrownNode, ...]

    def skeleton(self) -> PreferenceTree:
        """The tree as a `PreferenceTree` with no comparisons yet (not a valid record until compared)."""
        return PreferenceTree(self.prompt, self.domain, tuple(TreeNode(n.parent, n.text) for n in self.nodes), ())


@dataclasses.dataclass
class TreeStats:
    """Counts from growing and comparing, for the run log."""

    prompts: int = 0
    nodes: int = 0
    leaves: int = 0
    ended_leaves: int = 0  # leaves that stopped at EOS (at any depth)
    generate_calls: int = 0
    trimmed_segments: int = 0  # length-cut segments trimmed back to a whole character
    undecodable_nodes: int = 0  # children dropped: their text would not extend their parent's
    blank_leaves: int = 0  # leaves pruned because their response was blank
    trees: int = 0  # trees with >= 1 comparison (the records written)
    trees_without_pairs: int = 0  # fewer than two distinct leaf responses: no record
    comparisons: int = 0
    identical_leaf_pairs: int = 0  # leaf pairs with identical responses, never compared
    judge_calls: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        text = (f"{self.trees} trees from {self.prompts} prompts: {self.nodes} nodes, {self.leaves} leaves "
                f"({self.ended_leaves} ended at EOS), {self.comparisons} comparisons, "
                f"{self.identical_leaf_pairs} identical leaf pairs skipped, {self.generate_calls} generate calls, "
                f"{self.judge_calls} judge calls, {self.seconds:.1f}s")
        dropped = [(self.trees_without_pairs, "trees without a distinct leaf pair"),
                   (self.undecodable_nodes, "undecodable nodes"), (self.blank_leaves, "blank leaves"),
                   (self.trimmed_segments, "segments trimmed to a whole character")]
        extra = ", ".join(f"{n} {what}" for n, what in dropped if n)
        return text + (f"; {extra}" if extra else "")


def _prompt_fields(p, i: int) -> tuple[str, str]:
    if isinstance(p, PromptExample) or (hasattr(p, "prompt") and hasattr(p, "domain")):
        return p.prompt, p.domain
    if isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(x, str) for x in p):
        return p[0], p[1]
    raise TypeError(f"prompts[{i}] is {type(p).__name__}; expected a PromptExample or a (prompt, domain) pair")


class _Node(NamedTuple):
    parent: int
    depth: int
    tokens: tuple[int, ...]
    text: str
    ended: bool
    path_tokens: tuple[int, ...]  # the response so far, through this node
    response: str  # decode(path_tokens)


def _log(msg: str) -> None:
    print(f"[trees] {msg}", file=sys.stderr, flush=True)


def grow_trees(params, model_config, tokenizer, prompts: Sequence, config: TreeConfig, *, lora=None,
               chat: bool = False, progress: bool = True, stats: TreeStats | None = None,
               mesh=None) -> list[GrownTree]:
    """Grow one tree per prompt (a `PromptExample` or a (prompt, domain) pair), breadth first; see the module
    docstring. tokenizer: a Hugging Face tokenizer, a `WordTokenizer` or a `TokenCodec`. progress: a line per
    level on stderr. mesh: sample sharded (see `generate`). Returns the trees in prompt order (a tree may have no
    nodes if every leaf was blank)."""
    from metapl.models.sampling import SamplingConfig, bucket, generate

    stats = stats if stats is not None else TreeStats()
    codec = codec_for(tokenizer, chat=chat)
    if model_config.vocab_size < codec.vocab_size:
        raise ValueError(f"the tokenizer has {codec.vocab_size} ids but the model only {model_config.vocab_size}")
    separators = set(codec.separator_ids(config.separators))
    eos = set(codec.eos_ids)
    fields = [_prompt_fields(p, i) for i, p in enumerate(prompts)]
    prompt_ids = []
    for i, (text, _) in enumerate(fields):
        ids = tuple(codec.encode(text))
        if not ids:
            raise ValueError(f"prompts[{i}] encodes to no tokens; every prompt needs at least one")
        prompt_ids.append(ids)
    stats.prompts += len(fields)
    nodes: list[list[_Node]] = [[] for _ in fields]
    frontier = [(t, -1) for t in range(len(fields))]  # (tree, parent node) pairs to expand
    base_key = jax.random.key(config.seed)
    bs = config.batch_size
    for level in range(1, config.depth + 1):
        start = time.perf_counter()
        width, temperature = config.branchings[level - 1], config.temperature_schedule[level - 1]
        sampling = SamplingConfig(max_new_tokens=config.segment_tokens, temperature=temperature, top_k=config.top_k,
                                  top_p=config.top_p, stop_token_ids=tuple(sorted(eos | separators)))
        rows = [(t, p) for t, p in frontier for _ in range(width)]
        contexts = [prompt_ids[t] + (nodes[t][p].path_tokens if p >= 0 else ()) for t, p in rows]
        segments: list[list[int]] = []
        for call, first in enumerate(range(0, len(rows), bs)):
            chunk = contexts[first:first + bs]
            chunk = chunk + [chunk[0]] * (bs - len(chunk))  # dummy rows keep one batch shape
            length = bucket(max(len(c) for c in chunk))
            tokens = np.full((bs, length), codec.pad_id, np.int32)
            mask = np.zeros((bs, length), bool)
            for r, c in enumerate(chunk):
                tokens[r, length - len(c):] = c
                mask[r, length - len(c):] = True
            key = jax.random.fold_in(jax.random.fold_in(base_key, level), call)
            out = generate(params, model_config, tokens, mask, key, sampling, pad_id=codec.pad_id, lora=lora,
                           mesh=mesh)
            toks, keep = np.asarray(out.tokens), np.asarray(out.mask)
            segments += [[int(x) for x, k in zip(toks[r], keep[r]) if k] for r in range(min(bs, len(rows) - first))]
            stats.generate_calls += 1
        frontier, ended, dropped = [], 0, 0
        for (t, p), seg in zip(rows, segments):
            stopped = bool(seg) and seg[-1] in eos
            if stopped:
                seg = seg[:-1]
            parent_tokens = nodes[t][p].path_tokens if p >= 0 else ()
            parent_text = nodes[t][p].response if p >= 0 else ""
            response = codec.decode(parent_tokens + tuple(seg))
            expand = not stopped and level < config.depth
            if expand and response.endswith("\ufffd") and not (seg and seg[-1] in separators):
                # A length cut through a multi-token character: give back the partial character so the
                # children's text extends this node's.
                n = len(seg)
                while seg and response.endswith("\ufffd"):
                    seg = seg[:-1]
                    response = codec.decode(parent_tokens + tuple(seg))
                stats.trimmed_segments += n != len(seg)
            if not response.startswith(parent_text):
                dropped += 1
                continue
            nodes[t].append(_Node(p, level, tuple(seg), response[len(parent_text):], stopped,
                                  parent_tokens + tuple(seg), response))
            ended += stopped
            if expand:
                frontier.append((t, len(nodes[t]) - 1))
        stats.undecodable_nodes += dropped
        if progress:
            calls = -(-len(rows) // bs)
            _log(f"depth {level}/{config.depth}: {len(rows)} children of {len(rows) // width if width else 0} nodes "
                 f"at T={temperature:g} in {calls} generate call(s) of {bs}; {ended} ended at EOS"
                 + (f", {dropped} undecodable" if dropped else "") + f" ({time.perf_counter() - start:.2f}s)")
        if not frontier:
            break
    trees = []
    for (text, domain), tree_nodes in zip(fields, nodes):
        kept = _prune_blank_leaves(tree_nodes, stats)
        trees.append(GrownTree(text, domain, tuple(GrownNode(n.parent, n.depth, n.tokens, n.text, n.ended)
                                                   for n in kept)))
        parents = {n.parent for n in kept}
        leaves = [i for i in range(len(kept)) if i not in parents]
        stats.nodes += len(kept)
        stats.leaves += len(leaves)
        stats.ended_leaves += sum(kept[i].ended for i in leaves)
    return trees


def _prune_blank_leaves(nodes: list[_Node], stats: TreeStats) -> list[_Node]:
    """Remove leaves with a blank response (repeatedly: a parent can become one), renumbering the rest."""
    alive = [True] * len(nodes)
    changed = True
    while changed:
        changed = False
        has_child = [False] * len(nodes)
        for i, n in enumerate(nodes):
            if alive[i] and n.parent >= 0:
                has_child[n.parent] = True
        for i, n in enumerate(nodes):
            if alive[i] and not has_child[i] and not n.response.strip():
                alive[i], changed = False, True
                stats.blank_leaves += 1
    new_index, kept = {-1: -1}, []
    for i, n in enumerate(nodes):
        if alive[i]:
            new_index[i] = len(kept)
            kept.append(n._replace(parent=new_index[n.parent]))
    return kept


# --------------------------------------------------------------------------------------------------- comparing


def select_pairs(tree: PreferenceTree, config: TreeConfig,
                 rng: np.random.Generator) -> tuple[list[tuple[int, int, int]], int]:
    """Leaf pairs (a, b, shared_prefix) to compare, by `config.pair_selection`, and the number of leaf pairs
    skipped because their responses are identical."""
    leaves = tree.leaves()
    paths = {leaf: tree.path(leaf) for leaf in leaves}
    responses = {leaf: tree.response(leaf) for leaf in leaves}
    eligible, identical = [], 0
    for i, a in enumerate(leaves):
        for b in leaves[i + 1:]:
            if responses[a] == responses[b]:
                identical += 1
                continue
            eligible.append((a, b, _common_length(paths[a], paths[b])))
    if config.pair_selection == "all" or not eligible:
        return eligible, identical
    k = len(eligible) if config.pairs_per_tree is None else min(config.pairs_per_tree, len(eligible))
    if config.pair_selection == "uniform":
        return [eligible[i] for i in sorted(rng.choice(len(eligible), size=k, replace=False))], identical
    groups: dict[int, list] = {}
    for pair in eligible:
        groups.setdefault(pair[2], []).append(pair)
    queues = [[groups[s][i] for i in rng.permutation(len(groups[s]))] for s in sorted(groups, reverse=True)]
    chosen = []
    while len(chosen) < k:
        for q in queues:
            if q and len(chosen) < k:
                chosen.append(q.pop(0))
    return chosen, identical


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def compare_leaves(tree: PreferenceTree, score: Score, config: TreeConfig, *, index: int = 0,
                   stats: TreeStats | None = None) -> PreferenceTree | None:
    """`tree` with its comparisons: pairs chosen by `select_pairs`, scored by `score(domain, prompt, response)`
    (each distinct response once) and labelled by a Bradley-Terry draw at `config.label_noise`. index: the
    tree's number, which seeds its selection and label streams. None if no two leaves differ."""
    stats = stats if stats is not None else TreeStats()
    pairs, identical = select_pairs(tree, config, np.random.default_rng([config.seed, _SELECT, index]))
    stats.identical_leaf_pairs += identical
    if not pairs:
        stats.trees_without_pairs += 1
        return None
    label_rng = np.random.default_rng([config.seed, _LABEL, index])
    scores: dict[str, float] = {}

    def judge(leaf: int) -> float:
        response = tree.response(leaf)
        if response not in scores:
            value = float(score(tree.domain, tree.prompt, response))
            if not math.isfinite(value):
                raise ValueError(f"the judge scored a response {value}; scores must be finite")
            scores[response] = value
            stats.judge_calls += 1
        return scores[response]

    comparisons = []
    for a, b, shared in pairs:
        sa, sb = judge(a), judge(b)
        a_wins = bradley_terry_label(sa, sb, temperature=config.label_noise, rng=label_rng)
        chosen, rejected, margin = (a, b, sa - sb) if a_wins else (b, a, sb - sa)
        comparisons.append(LeafComparison(chosen, rejected, shared, margin))
    stats.trees += 1
    stats.comparisons += len(comparisons)
    return dataclasses.replace(tree, comparisons=tuple(comparisons))


class TreeResult(NamedTuple):
    trees: list[PreferenceTree]
    stats: TreeStats


def generate_trees(params, model_config, tokenizer, prompts: Sequence, score: Score, config: TreeConfig, *,
                   lora=None, chat: bool = False, progress: bool = True, mesh=None) -> TreeResult:
    """Grow a tree per prompt (`grow_trees`), compare its leaves (`compare_leaves`) and return the valid
    `PreferenceTree` records (trees without two distinct leaves are left out and counted) with the counts."""
    start = time.perf_counter()
    stats = TreeStats()
    grown = grow_trees(params, model_config, tokenizer, prompts, config, lora=lora, chat=chat, progress=progress,
                       stats=stats, mesh=mesh)
    trees = []
    for i, g in enumerate(grown):
        tree = compare_leaves(g.skeleton(), score, config, index=i, stats=stats)
        if tree is not None:
            trees.append(tree)
    stats.seconds = time.perf_counter() - start
    if progress:
        _log(stats.summary())
    return TreeResult(trees, stats)


def tree_to_pairs(tree: PreferenceTree) -> list[PreferencePair]:
    """One `PreferencePair` per comparison, with the two leaves' full response strings (same order)."""
    return [PreferencePair(tree.prompt, tree.response(c.chosen), tree.response(c.rejected), tree.domain,
                           gold_margin=c.gold_margin) for c in tree.comparisons]
