"""The methods an OOD protocol compares, by name: what each trains, how it is tested on the held-out domains,
and where it comes from.

Kinds of method:
  reference  the reference policy π_ref itself (nothing trained; every test's "gold_reference");
  reward     a reward model guiding the KL-regularised projected solver on each held-out domain (`meta_test`);
  oracle     the benchmark's gold reward guiding the same solver (the ceiling at that β; uses `bt`'s run);
  policy     a policy trained on the meta-train domains answering the held-out prompts (`policy_test`).

Methods that need a reward to train (`rloo`, `ppo`, the offline methods) are rewarded by the same seed's
Bradley–Terry run (`reward.model`), so they learn from the same labelled pairs as the others: the feedback
budget. With the protocol's `feedback: gold` they are rewarded by the benchmark's gold judge instead (unlimited
oracle feedback, for comparing the policy methods themselves) and need no `bt` run. The exception is `tree_rm`
(and `chain_rm`), which label the comparisons they grow with the gold judge.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class Method:
    """name: as the protocol config names it; label: for tables ({reward}: what rewards it, see `title`); kind:
    see the module docstring; algo: the run's algorithm (None: nothing trained); run: the method's own run settings
    (a run-config mapping, under the protocol's `run` and over it); steps: default training steps; bt_reward:
    rewarded by the seed's `bt` run; budget_of: labels as many comparisons as that method's run of the same seed
    did; source: the paper it comes from."""

    name: str
    label: str
    kind: Literal["reference", "reward", "oracle", "policy"]
    algo: str | None = None
    run: dict = dataclasses.field(default_factory=dict)
    steps: int = 100
    bt_reward: bool = False
    budget_of: str | None = None
    source: str = ""

    def title(self, feedback: str = "bt") -> str:
        """The label for tables, naming what rewards a method that needs a reward (`feedback` as in `needs`)."""
        return self.label.format(reward="the BT RM" if feedback == "bt" else "the gold judge")

    def needs(self, feedback: str = "bt") -> tuple[str, ...]:
        """The methods whose runs this one uses, when the methods that need a reward get it from `feedback`
        ("bt": the seed's BT run; "gold": the gold judge)."""
        bt = ("bt",) if (self.bt_reward and feedback == "bt") or self.kind == "oracle" else ()
        return bt + ((self.budget_of,) if self.budget_of else ())


BT_PAPER = "Bradley & Terry (1952); Ouyang et al., arXiv 2203.02155"
OFFLINE_PAPER = "Hu et al., arXiv 2308.12050"

METHODS = {m.name: m for m in [
    Method("reference", "reference policy", "reference"),
    Method("bt", "Bradley–Terry RM + KL solver", "reward", "rm", steps=150, source=BT_PAPER),
    Method("meta", "meta-learned RM + KL solver", "reward", "meta", steps=150,
           source="Jia, arXiv 2402.14760 (implemented from the paper's description)"),
    Method("meta_onpolicy", "meta-learned RM (on-policy inner solver) + KL solver", "reward", "meta",
           run={"meta": {"inner_solver": "onpolicy"}}, steps=150,
           source="Jia, arXiv 2402.14760 (implemented from the paper's description)"),
    Method("tree_rm", "tree-structured preference RM + KL solver", "reward", "tree-rm", steps=150,
           source="Qiu et al., arXiv 2402.10184"),
    Method("chain_rm", "chain RM (independent pairs, as many comparisons as the tree RM) + KL solver", "reward",
           "tree-rm", run={"tree": {"depth": 1, "branching": 2, "pairs_per_tree": 1}}, steps=150,
           budget_of="tree_rm", source="Qiu et al., arXiv 2402.10184 (their chain baseline)"),
    Method("gold", "gold reward (oracle) + KL solver", "oracle", source="the benchmark's gold judge"),
    Method("dpo", "DPO on the pooled pairs", "policy", "dpo", steps=200, source="Rafailov et al., arXiv 2305.18290"),
    Method("ipo", "IPO on the pooled pairs", "policy", "ipo", steps=200, source="Azar et al., arXiv 2310.12036"),
    Method("rloo", "RLOO with {reward}", "policy", "rloo", steps=60, bt_reward=True,
           source="Ahmadian et al., arXiv 2402.14740"),
    Method("ppo", "PPO with {reward}", "policy", "ppo", steps=80, bt_reward=True,
           source="Schulman et al., arXiv 1707.06347; Ouyang et al., arXiv 2203.02155"),
    Method("mle_filter", "filtered MLE on samples scored by {reward}", "policy", "mle-filter", steps=150,
           bt_reward=True, source=OFFLINE_PAPER),
    Method("rwr", "reward-weighted regression on samples scored by {reward}", "policy", "rwr", steps=150,
           bt_reward=True, source=OFFLINE_PAPER),
    Method("dt", "reward-conditioned SFT (DT) on samples scored by {reward}", "policy", "dt", steps=200,
           bt_reward=True, source=OFFLINE_PAPER),
    Method("srpo", "SRPO on the pooled pairs", "policy", "srpo", steps=150, source="Choi et al., arXiv 2406.01660"),
]}


def method(name: str) -> Method:
    """The method called `name`; an unknown name is an error listing the known ones."""
    from metapl.config import ConfigError

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; the protocol knows {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "Method", "method"]
