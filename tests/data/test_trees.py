"""Preference trees grown by a tiny random model over the synthetic word vocabulary, judged by a fake judge."""

import dataclasses

import jax
import pytest

from metapl.data.records import read_jsonl, write_jsonl
from metapl.data.schemas import LeafComparison, PreferenceTree, PromptExample, TreeNode
from metapl.data.synthetic import WordTokenizer
from metapl.data.trees import (
    TokenCodec,
    TreeConfig,
    TreeStats,
    codec_for,
    compare_leaves,
    generate_trees,
    grow_trees,
    select_pairs,
    tree_to_pairs,
)
from metapl.models import init_params, tiny

TOK = WordTokenizer(126)  # ids 0..127 = the tiny model's vocabulary
SEP_WORDS = {f"w{i}" for i in range(12)}  # ids 2..13: roughly one token in ten ends a segment
PROMPTS = [PromptExample("w5 w9 w17 w40", "syn000"), PromptExample("w3 w3 w60", "syn001"),
           PromptExample("w100 w7 w8 w9 w11 w12", "syn000")]
CONFIG = TreeConfig(depth=3, branching=(2, 2, 2), segment_tokens=4, separators=tuple(sorted(SEP_WORDS)),
                    pairs_per_tree=6, label_noise=0.0, batch_size=8, seed=3)


def judge(domain, prompt, response):
    """Deterministic fake judge: mean word index, a little domain- and prompt-dependent."""
    words = response.split()
    return sum(int(w[1:]) for w in words) / len(words) / 126 + 0.01 * len(prompt.split()) + (domain == "syn001")


@pytest.fixture(scope="module")
def model():
    config = tiny("llama")
    return init_params(config, jax.random.key(0)), config


@pytest.fixture(scope="module")
def grown(model):
    return grow_trees(*model, TOK, PROMPTS, CONFIG, progress=False)


@pytest.fixture(scope="module")
def result(model):
    return generate_trees(*model, TOK, PROMPTS, judge, CONFIG, progress=False)


def test_config_schedules_and_validation():
    c = TreeConfig(depth=4, branching=3)
    assert c.branchings == (3, 3, 3, 3) and c.max_nodes() == 3 + 9 + 27 + 81
    t = c.temperature_schedule
    assert t[0] == pytest.approx(0.7) and t[-1] == pytest.approx(1.0) and list(t) == sorted(t)
    assert TreeConfig(depth=1, branching=4).temperature_schedule == (1.0,)
    assert TreeConfig(depth=2, temperatures=[0.5, 0.9]).temperature_schedule == (0.5, 0.9)
    for bad in (dict(depth=0), dict(branching=(2, 2)), dict(branching=1), dict(branching=(2, 0, 2)),
                dict(temperatures=(1.0,)), dict(temperatures=-1.0), dict(segment_tokens=0),
                dict(pairs_per_tree=0), dict(pair_selection="best"), dict(label_noise=-0.1), dict(separators=("",)),
                dict(top_p=0.0), dict(batch_size=0)):
        with pytest.raises(ValueError):
            TreeConfig(**bad)


def test_separator_resolution():
    codec = codec_for(TOK)
    assert codec.separator_ids(("w3",)) == (5,)  # not w13, w23, ...
    assert codec.separator_ids((7, "w0")) == (2, 7)
    with pytest.raises(ValueError, match="matches no token"):
        codec.separator_ids((".",))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        codec.separator_ids((500,))
    from tests.gguf_fixture import tiny_tokenizer

    hf = codec_for(tiny_tokenizer())
    ids = hf.separator_ids((".", "\n"))
    texts = hf.token_texts()
    assert {texts[i] for i in ids} == {".", "\n"}
    assert hf.encode("the cat") and hf.decode(hf.encode("the cat")) == "the cat"


def test_tree_shapes_prefix_property_and_cuts(grown):
    assert len(grown) == len(PROMPTS)
    assert [(g.prompt, g.domain) for g in grown] == [(p.prompt, p.domain) for p in PROMPTS]
    sep_ids = set(range(2, 14))
    cuts = lengths = 0
    for g in grown:
        assert 0 < len(g.nodes) <= CONFIG.max_nodes()
        skeleton = g.skeleton()
        children = {i: [j for j, m in enumerate(g.nodes) if m.parent == i] for i in range(-1, len(g.nodes))}
        assert 1 <= len(children[-1]) <= CONFIG.branchings[0]
        for i, n in enumerate(g.nodes):
            assert -1 <= n.parent < i  # a parent precedes its children
            assert n.depth == (1 if n.parent < 0 else g.nodes[n.parent].depth + 1) <= CONFIG.depth
            assert len(children[i]) <= (CONFIG.branchings[n.depth] if n.depth < CONFIG.depth else 0)
            # The text is exactly what the tokens add to the parent's response.
            parent_response = skeleton.response(n.parent) if n.parent >= 0 else ""
            assert skeleton.response(i) == parent_response + n.text
            assert TOK.decode([t for j in skeleton.path(i) for t in g.nodes[j].tokens]) == skeleton.response(i)
            # Cut at the first separator: none before the segment's last token, at most segment_tokens tokens.
            assert len(n.tokens) + n.ended <= CONFIG.segment_tokens
            assert not sep_ids & set(n.tokens[:-1])
            if children[i]:  # an expanded node did not stop: it ended at a separator or ran to full length
                assert not n.ended
                assert n.tokens[-1] in sep_ids or len(n.tokens) == CONFIG.segment_tokens
            elif n.depth < CONFIG.depth:
                assert n.ended  # a leaf above the last level stopped at EOS
            cuts += bool(n.tokens) and n.tokens[-1] in sep_ids
            lengths += len(n.tokens) == CONFIG.segment_tokens
    assert cuts > 0 and lengths > 0  # both kinds of segment end occur
    leaves = [len(g.skeleton().leaves()) for g in grown]
    assert max(leaves) > 2  # the trees actually branch


def test_eos_stops_a_branch(model):
    # Make EOS frequent: words w0..w5 (ids 2..7) end the sequence, w6..w11 (ids 8..13) end a segment; the
    # sampler's stop set {1..13} is the same as CONFIG's, so this reuses its compiled program.
    codec = dataclasses.replace(codec_for(TOK), eos_ids=tuple(range(1, 8)),
                                decode=lambda ids: TOK.decode([t for t in ids if t >= 8]))
    config = dataclasses.replace(CONFIG, separators=tuple(range(8, 14)))
    stats = TreeStats()
    trees = grow_trees(*model, codec, PROMPTS, config, progress=False, stats=stats)
    assert stats.ended_leaves > 0
    for g in trees:
        parents = {n.parent for n in g.nodes}
        for i, n in enumerate(g.nodes):
            assert not set(n.tokens) & set(codec.eos_ids)  # the stop token is not part of the text
            if n.ended:
                assert i not in parents
    assert any(n.ended and n.depth < CONFIG.depth for g in trees for n in g.nodes)
    assert stats.nodes == sum(len(g.nodes) for g in trees)


def test_comparisons_labels_and_schema(result):
    trees, stats = result
    assert trees and stats.trees == len(trees) and stats.comparisons == sum(len(t.comparisons) for t in trees)
    for tree in trees:
        assert PreferenceTree.from_dict(tree.to_dict()) == tree  # schema validation passes
        assert 1 <= len(tree.comparisons) <= CONFIG.pairs_per_tree
        leaves = set(tree.leaves())
        seen = set()
        for c in tree.comparisons:
            assert {c.chosen, c.rejected} <= leaves and frozenset((c.chosen, c.rejected)) not in seen
            seen.add(frozenset((c.chosen, c.rejected)))
            a, b = tree.path(c.chosen), tree.path(c.rejected)
            assert c.shared_prefix == len(set(a) & set(b))  # paths share exactly their common ancestors
            chosen, rejected = tree.response(c.chosen), tree.response(c.rejected)
            assert chosen != rejected
            margin = judge(tree.domain, tree.prompt, chosen) - judge(tree.domain, tree.prompt, rejected)
            assert c.gold_margin == pytest.approx(margin) and margin >= 0  # label_noise=0: the judge decides
    depths = {c.shared_prefix for t in trees for c in t.comparisons}
    assert len(depths) >= 2  # stratified selection covers several shared-prefix depths


def test_tree_to_pairs(result):
    tree = result.trees[0]
    pairs = tree_to_pairs(tree)
    assert len(pairs) == len(tree.comparisons)
    for p, c in zip(pairs, tree.comparisons):
        assert (p.prompt, p.domain, p.gold_margin) == (tree.prompt, tree.domain, c.gold_margin)
        assert (p.chosen, p.rejected) == (tree.response(c.chosen), tree.response(c.rejected))


def test_jsonl_round_trip(result, tmp_path):
    path = tmp_path / "trees.jsonl"
    assert write_jsonl(path, result.trees) == len(result.trees)
    assert read_jsonl(path, PreferenceTree).records == result.trees


def test_deterministic_under_a_seed(model, result, capsys):
    again = generate_trees(*model, TOK, PROMPTS, judge, CONFIG, progress=True)
    assert again.trees == result.trees
    err = capsys.readouterr().err
    assert "depth 1/3" in err and "comparisons" in err  # a line per level and a summary on stderr
    other = generate_trees(*model, TOK, PROMPTS, judge, dataclasses.replace(CONFIG, seed=4), progress=False)
    assert other.trees != result.trees


def _hand_tree(responses_by_leaf_path):
    """A tree from {(segment, segment, ...): ...} leaf paths, sharing nodes along common prefixes."""
    nodes, index = [], {}
    for path in responses_by_leaf_path:
        parent = -1
        for d in range(len(path)):
            if path[:d + 1] not in index:
                index[path[:d + 1]] = len(nodes)
                nodes.append(TreeNode(parent, path[d]))
            parent = index[path[:d + 1]]
    return PreferenceTree("w1 w2", "syn000", tuple(nodes), ())


TREE = _hand_tree([("w1", " w2", " w3"), ("w1", " w2", " w4"), ("w1", " w5", " w6"), ("w1", " w5", " w7"),
                   ("w8", " w9", " w3"), ("w8", " w9", " w3 w3"), ("w8", " w10", " w10"), ("w8", " w10", "")])


def test_pair_selection_rules():
    import numpy as np

    rng = np.random.default_rng(0)
    every, identical = select_pairs(TREE, TreeConfig(pair_selection="all"), rng)
    assert len(every) == 8 * 7 // 2 and identical == 0
    by_depth = {}
    for a, b, s in every:
        by_depth.setdefault(s, []).append((a, b))
    assert sorted(by_depth) == [0, 1, 2]
    one, _ = select_pairs(TREE, TreeConfig(pairs_per_tree=1), rng)
    assert one[0][2] == 2  # the scarcest pair shares the longest prefix
    three, _ = select_pairs(TREE, TreeConfig(pairs_per_tree=3), rng)
    assert sorted(s for _, _, s in three) == [0, 1, 2]  # every depth covered
    uniform, _ = select_pairs(TREE, TreeConfig(pairs_per_tree=5, pair_selection="uniform"), rng)
    assert len(set(uniform)) == 5 and set(uniform) <= set(every)
    assert len(select_pairs(TREE, TreeConfig(pairs_per_tree=None), rng)[0]) == len(every)


def test_identical_leaves_are_never_paired_and_counted():
    nodes = (TreeNode(-1, "w1"), TreeNode(0, " w2"), TreeNode(0, " w3"),  # leaves "w1 w2", "w1 w3"
             TreeNode(-1, "w1"), TreeNode(3, " w2"), TreeNode(3, " w5"))  # leaves "w1 w2" (again), "w1 w5"
    tree = PreferenceTree("w1 w2", "syn000", nodes, ())
    stats = TreeStats()
    config = TreeConfig(depth=2, pair_selection="all", label_noise=0.0)
    out = compare_leaves(tree, judge, config, stats=stats)
    assert stats.identical_leaf_pairs == 1 and len(out.comparisons) == 4 * 3 // 2 - 1
    assert all({c.chosen, c.rejected} != {1, 4} for c in out.comparisons)
    assert PreferenceTree.from_dict(out.to_dict()) == out
    assert stats.judge_calls == 3  # each distinct response scored once
    same = PreferenceTree("w1", "syn000", (TreeNode(-1, "w1"), TreeNode(0, " w2"), TreeNode(0, " w2")), ())
    assert compare_leaves(same, judge, config, stats=stats) is None and stats.trees_without_pairs == 1


def test_labels_follow_bradley_terry_noise():
    config = TreeConfig(pair_selection="all", label_noise=1e6)  # near coin flips
    flips = [compare_leaves(TREE, judge, config, index=i) for i in range(20)]
    wrong = sum(c.gold_margin < 0 for t in flips for c in t.comparisons)
    assert 0 < wrong < sum(len(t.comparisons) for t in flips)
    for t in flips:
        for c in t.comparisons:
            d = judge(t.domain, t.prompt, t.response(c.chosen)) - judge(t.domain, t.prompt, t.response(c.rejected))
            assert c.gold_margin == pytest.approx(d)
    assert isinstance(flips[0].comparisons[0], LeafComparison)


def test_hugging_face_tokenizer(model):
    from tests.gguf_fixture import tiny_tokenizer

    tok = tiny_tokenizer()
    config = tiny("llama", vocab_size=len(tok))
    params = init_params(config, jax.random.key(1))
    tree_config = TreeConfig(depth=2, branching=2, segment_tokens=4, separators=(".", " "), batch_size=8,
                             label_noise=0.0)
    result = generate_trees(params, config, tok, [("the cat", "d")], lambda d, p, r: float(len(r)), tree_config,
                            progress=False)
    codec = codec_for(tok)
    assert isinstance(codec, TokenCodec)
    for tree in result.trees:
        assert PreferenceTree.from_dict(tree.to_dict()) == tree
        for i in tree.leaves():
            parent = tree.nodes[i].parent
            if parent >= 0:
                assert tree.response(i).startswith(tree.response(parent))
