"""Evaluation: a policy judged by the gold judge, and intervals over domains.

  gold    gold_reward_of_samples (mean gold reward of one sample per prompt)
  stats   bootstrap_interval, mean_interval, paired_difference
"""

from metapl.eval.gold import gold_reward_of_samples
from metapl.eval.stats import (
    bootstrap_interval, mean_interval, paired_difference, two_level_interval, two_level_means, win_rate,
)

__all__ = ["bootstrap_interval", "gold_reward_of_samples", "mean_interval", "paired_difference", "two_level_interval",
           "two_level_means", "win_rate"]
