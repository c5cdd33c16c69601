"""Every example config in experiments/configs loads into the typed run config of an available algorithm."""

from pathlib import Path

import pytest

from metapl.meta.options import MetaOptions
from metapl.runs import algorithm_names, load_run_config

CONFIGS = sorted((Path(__file__).parent.parent / "experiments" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_config_loads(path):
    cfg = load_run_config(path)
    assert cfg.algo in algorithm_names()
    if cfg.algo == "meta":
        assert isinstance(cfg.meta, MetaOptions)  # every key of the meta section is known and valid


def test_there_are_example_configs():
    assert len(CONFIGS) >= 5
