"""Evaluation: judges behind one interface, a policy judged by the gold judge, and intervals over domains.

  judges      Judge, ScoringJudge, GoldJudge, ScorerJudge, verdicts_from_scores, win_rate_of
  http_judge  HttpJudge (an LLM behind an OpenAI-compatible API), JudgeError, parse_verdict
  gold        gold_reward_of_samples (mean gold reward of one sample per prompt)
  stats       bootstrap_interval, mean_interval, paired_difference, two_level_interval, win_rate
"""

from metapl.eval.gold import gold_reward_of_samples
from metapl.eval.http_judge import HttpJudge, JudgeError, parse_verdict
from metapl.eval.judges import GoldJudge, Judge, ScorerJudge, ScoringJudge, verdicts_from_scores, win_rate_of
from metapl.eval.stats import (
    bootstrap_interval, mean_interval, paired_difference, two_level_interval, two_level_means, win_rate,
)

__all__ = ["GoldJudge", "HttpJudge", "Judge", "JudgeError", "ScorerJudge", "ScoringJudge", "bootstrap_interval",
           "gold_reward_of_samples", "mean_interval", "paired_difference", "parse_verdict", "two_level_interval",
           "two_level_means", "verdicts_from_scores", "win_rate", "win_rate_of"]
