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


def test_there_are_example_configs():
    assert len(CONFIGS) >= 5
