"""Every example config in experiments/configs loads into a RunConfig for an available algorithm."""

from pathlib import Path

import pytest

from metapl.config import load_config
from metapl.train.algorithms import ALGORITHMS
from metapl.train.run import RunConfig

CONFIGS = sorted((Path(__file__).parent.parent / "experiments" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_config_loads(path):
    cfg = load_config(RunConfig, path)
    assert cfg.algo in ALGORITHMS
    if cfg.algo == "meta":
        from metapl.meta.train import meta_options

        meta_options(cfg)  # every key of the meta section is known and valid


def test_there_are_example_configs():
    assert len(CONFIGS) >= 5
