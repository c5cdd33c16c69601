"""The `meta` section of a run config: the bilevel problem, the episode shape and the reference sampling, flat.

    meta:
      inner_steps: 4          # MetaConfig: the inner solver, the hypergradient method, β, β_o, λ_BT, ...
      domains_per_episode: 4  # EpisodeShape: domains, support prompts, query pairs, feedback budget
      samples_per_prompt: 4   # reference samples N per support prompt (projected solver)
      support_pool: 16        # support prompts per training domain whose reference samples are drawn once

A `meta` run trains with it; an `rm` run carries one too, so that `metapl meta-test` tests a Bradley–Terry reward
model with the same solver as the meta-learned one it is compared with.
"""

from __future__ import annotations

import dataclasses

from metapl.config import number
from metapl.data.episodes import EpisodeConfig, EpisodeShape
from metapl.meta.metagrad import MetaConfig


@dataclasses.dataclass(frozen=True)
class MetaOptions(MetaConfig, EpisodeShape):
    """MetaConfig and EpisodeShape fields, plus samples_per_prompt (reference samples N per support prompt) and
    support_pool (prompts per training domain whose reference samples are drawn once, at set-up)."""

    samples_per_prompt: int = number(4, ge=1)
    support_pool: int = number(16, ge=1)

    def __post_init__(self):
        super().__post_init__()
        for name in ("samples_per_prompt", "support_pool", "domains_per_episode", "support_prompts", "query_pairs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def bilevel(self) -> MetaConfig:
        """The bilevel problem's settings alone."""
        return MetaConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MetaConfig)})

    def episodes(self, seed: int) -> EpisodeConfig:
        """The episode shape with the seed of the episode draws."""
        return EpisodeConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EpisodeShape)}, seed=seed)


__all__ = ["MetaOptions"]
