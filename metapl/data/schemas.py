"""Typed, validated records: preference pairs, prompts, scored samples and preference trees.

Every record type has `from_dict(obj, where=...)`, which checks each field and raises `DataError` naming the
source file, line and field, and `to_dict()`, its inverse. Records are frozen dataclasses of plain Python values.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping


class DataError(ValueError):
    """A bad input record. `str()` reads `file:line: field 'name': what was wrong`."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.message, self.source, self.line, self.field = message, source, line, field
        where = ":".join(str(p) for p in (source, line) if p is not None)
        what = f"field {field!r}: {message}" if field else message
        super().__init__(f"{where}: {what}" if where else what)


@dataclasses.dataclass(frozen=True)
class Where:
    """Where a record came from, for error messages."""

    source: str | None = None
    line: int | None = None

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, source=self.source, line=self.line, field=field)


_NOWHERE = Where()


def _text(obj: Mapping, name: str, where: Where, *, optional: bool = False, allow_empty: bool = False) -> str | None:
    if name not in obj or obj[name] is None:
        if optional:
            return None
        raise where.error("missing (expected a string)", name)
    value = obj[name]
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {type(value).__name__}", name)
    if not allow_empty and not value.strip():
        raise where.error("is empty", name)
    return value


def _number(obj: Mapping, name: str, where: Where, *, optional: bool = False) -> float | None:
    if name not in obj or obj[name] is None:
        if optional:
            return None
        raise where.error("missing (expected a number)", name)
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(f"expected a number, got {type(value).__name__}", name)
    if not math.isfinite(value):
        raise where.error(f"must be finite, got {value}", name)
    return float(value)


def _integer(obj: Mapping, name: str, where: Where) -> int:
    if name not in obj:
        raise where.error("missing (expected an integer)", name)
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(f"expected an integer, got {type(value).__name__}", name)
    return value


def _mapping(obj: Any, where: Where, kind: str) -> Mapping:
    if not isinstance(obj, Mapping):
        raise where.error(f"expected a JSON object ({kind}), got {type(obj).__name__}")
    return obj


def _no_extra(obj: Mapping, allowed: tuple[str, ...], where: Where) -> None:
    extra = sorted(set(obj) - set(allowed))
    if extra:
        raise where.error(f"unknown field(s) {', '.join(map(repr, extra))}; expected {', '.join(allowed)}")


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred (`chosen`) and a dispreferred (`rejected`) response, from one domain.

    gold_margin: r*(chosen) - r*(rejected) under a gold reward, when one exists (synthetic benchmarks).
    """

    prompt: str
    chosen: str
    rejected: str
    domain: str
    gold_margin: float | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "chosen", "rejected", "domain", "gold_margin")

    @classmethod
    def from_dict(cls, obj: Any, where: Where = _NOWHERE) -> "PreferencePair":
        obj = _mapping(obj, where, "a preference pair")
        _no_extra(obj, cls.FIELDS, where)
        pair = cls(
            prompt=_text(obj, "prompt", where),
            chosen=_text(obj, "chosen", where),
            rejected=_text(obj, "rejected", where),
            domain=_text(obj, "domain", where),
            gold_margin=_number(obj, "gold_margin", where, optional=True),
        )
        if pair.chosen == pair.rejected:
            raise where.error("is identical to 'rejected' (a pair needs two different responses)", "chosen")
        return pair

    def to_dict(self) -> dict:
        return _drop_none(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """A prompt (for sampling or policy optimisation) from one domain, with an optional reference response."""

    prompt: str
    domain: str
    reference: str | None = None

    FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "domain", "reference")

    @classmethod
    def from_dict(cls, obj: Any, where: Where = _NOWHERE) -> "PromptExample":
        obj = _mapping(obj, where, "a prompt")
        _no_extra(obj, cls.FIELDS, where)
        return cls(
            prompt=_text(obj, "prompt", where),
            domain=_text(obj, "domain", where),
            reference=_text(obj, "reference", where, optional=True),
        )

    def to_dict(self) -> dict:
        return _drop_none(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class ScoredSample:
    """A response sampled from `policy` for a prompt, with its reward (from a reward model or gold judge)."""

    prompt: str
    response: str
    reward: float
    domain: str
    policy: str

    FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "response", "reward", "domain", "policy")

    @classmethod
    def from_dict(cls, obj: Any, where: Where = _NOWHERE) -> "ScoredSample":
        obj = _mapping(obj, where, "a scored sample")
        _no_extra(obj, cls.FIELDS, where)
        return cls(
            prompt=_text(obj, "prompt", where),
            response=_text(obj, "response", where),
            reward=_number(obj, "reward", where),
            domain=_text(obj, "domain", where),
            policy=_text(obj, "policy", where),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class TreeNode:
    """A text segment appended to its parent's text; parent -1 means the node hangs off the prompt."""

    parent: int
    text: str


@dataclasses.dataclass(frozen=True)
class LeafComparison:
    """Leaf `chosen` preferred to leaf `rejected`; `shared_prefix` = number of segments the two responses share."""

    chosen: int
    rejected: int
    shared_prefix: int
    gold_margin: float | None = None


@dataclasses.dataclass(frozen=True)
class PreferenceTree:
    """Responses to one prompt grown as a prefix tree, with comparisons between leaves.

    nodes[i].parent < i (a node comes after its parent); a leaf is a node that is nobody's parent; a leaf's
    response is the concatenation of the texts on its path from the root.
    """

    prompt: str
    domain: str
    nodes: tuple[TreeNode, ...]
    comparisons: tuple[LeafComparison, ...]

    FIELDS: ClassVar[tuple[str, ...]] = ("prompt", "domain", "nodes", "comparisons")

    def path(self, node: int) -> list[int]:
        """Node ids from the top of the tree down to `node`."""
        out = []
        while node != -1:
            out.append(node)
            node = self.nodes[node].parent
        return out[::-1]

    def response(self, node: int) -> str:
        return "".join(self.nodes[i].text for i in self.path(node))

    def leaves(self) -> list[int]:
        parents = {n.parent for n in self.nodes}
        return [i for i in range(len(self.nodes)) if i not in parents]

    @classmethod
    def from_dict(cls, obj: Any, where: Where = _NOWHERE) -> "PreferenceTree":
        obj = _mapping(obj, where, "a preference tree")
        _no_extra(obj, cls.FIELDS, where)
        prompt, domain = _text(obj, "prompt", where), _text(obj, "domain", where)
        raw_nodes, raw_cmp = obj.get("nodes"), obj.get("comparisons")
        if not isinstance(raw_nodes, list) or not raw_nodes:
            raise where.error("expected a non-empty list of {parent, text} objects", "nodes")
        if not isinstance(raw_cmp, list) or not raw_cmp:
            raise where.error("expected a non-empty list of {chosen, rejected, shared_prefix} objects", "comparisons")
        nodes = []
        for i, n in enumerate(raw_nodes):
            n = _mapping(n, where, f"node {i}")
            parent = _integer(n, "parent", where)
            if not -1 <= parent < i:
                raise where.error(f"node {i} has parent {parent}; a parent must be -1 or an earlier node", "nodes")
            nodes.append(TreeNode(parent, _text(n, "text", where, allow_empty=True)))
        tree = cls(prompt, domain, tuple(nodes), ())
        leaves = set(tree.leaves())
        for i, n in enumerate(nodes):
            if i in leaves and not tree.response(i).strip():
                raise where.error(f"leaf {i} has an empty response", "nodes")
        comparisons = []
        for j, c in enumerate(raw_cmp):
            c = _mapping(c, where, f"comparison {j}")
            chosen, rejected = _integer(c, "chosen", where), _integer(c, "rejected", where)
            for name, leaf in (("chosen", chosen), ("rejected", rejected)):
                if leaf not in leaves:
                    raise where.error(f"comparison {j}: {name}={leaf} is not a leaf node", "comparisons")
            if tree.response(chosen) == tree.response(rejected):
                raise where.error(f"comparison {j}: chosen and rejected responses are identical", "comparisons")
            shared = _integer(c, "shared_prefix", where)
            actual = _shared_prefix(tree.path(chosen), tree.path(rejected))
            if shared != actual:
                raise where.error(f"comparison {j}: shared_prefix is {shared} but the leaves share {actual} "
                                  "segments", "comparisons")
            comparisons.append(LeafComparison(chosen, rejected, shared, _number(c, "gold_margin", where,
                                                                                 optional=True)))
        return dataclasses.replace(tree, comparisons=tuple(comparisons))

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "domain": self.domain,
            "nodes": [dataclasses.asdict(n) for n in self.nodes],
            "comparisons": [_drop_none(dataclasses.asdict(c)) for c in self.comparisons],
        }


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def shared_prefix_length(tree: PreferenceTree, a: int, b: int) -> int:
    """Number of segments (nodes) the responses of leaves a and b have in common."""
    return _shared_prefix(tree.path(a), tree.path(b))


RECORD_TYPES = {"pairs": PreferencePair, "prompts": PromptExample, "samples": ScoredSample, "trees": PreferenceTree}
