"""Named random-key streams of a run: the one place that decides which key each random draw of a run uses.

    init_key = stream_key(cfg.seed, "model_init")

Every stream is `PRNGKey(seed + offset)`. The offsets are the ones runs used before the streams had names, so a
seed reproduces the numbers of earlier runs; two streams that never meet in one run may share an offset.
"""

from __future__ import annotations

import jax

STREAMS: dict[str, int] = {
    "model_init": 0,  # a randomly initialised backbone
    "eval_samples": 0,  # evaluation samples of a policy (its gold reward)
    "rollouts": 0,  # on-policy samples: step t draws with fold_in(key, t)
    "reward_head": 1,  # the scalar head of a reward model
    "adapters": 2,  # LoRA adapters of the trained model (policy or reward model)
    "meta_policy_adapters": 3,  # meta: θ₀, the reference policy's fresh adapters (meta-test rebuilds the same)
    "value_head": 3,  # PPO: the value head on the policy's backbone
    "reference_samples": 4,  # meta: samples from π_ref for the projected inner solver
    "episodes": 5,  # meta: the on-policy inner solver's samples, fold_in(key, episode)
}


def stream_key(seed: int, name: str) -> jax.Array:
    """The key of stream `name` for a run seeded with `seed`."""
    if name not in STREAMS:
        raise KeyError(f"unknown random stream {name!r}; streams: {', '.join(sorted(STREAMS))}")
    return jax.random.PRNGKey(seed + STREAMS[name])


__all__ = ["STREAMS", "stream_key"]
