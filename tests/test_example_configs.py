"""Every example config in experiments/configs loads: a run config into the typed config of an available
algorithm, a protocol config (protocol_*.yaml) into a ProtocolConfig whose every sub-run resolves."""

import json
from pathlib import Path

import pytest

from metapl.meta.options import MetaOptions
from metapl.protocol import load_protocol, method
from metapl.protocol.runner import run_dir_of, sub_run_mapping
from metapl.runs import algorithm_names, load_run_config
from metapl.train.spec import run_config_from_dict

ALL = sorted((Path(__file__).parent.parent / "experiments" / "configs").glob("*.yaml"))
PROTOCOLS = [p for p in ALL if p.stem.startswith("protocol_")]
CONFIGS = [p for p in ALL if p not in PROTOCOLS]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_config_loads(path):
    cfg = load_run_config(path)
    assert cfg.algo in algorithm_names()
    if cfg.algo == "meta":
        assert isinstance(cfg.meta, MetaOptions)  # every key of the meta section is known and valid


@pytest.mark.parametrize("path", PROTOCOLS, ids=[p.stem for p in PROTOCOLS])
def test_protocol_config_resolves_every_sub_run(path, tmp_path):
    cfg = load_protocol(path)
    for name in cfg.methods:
        source = method(name).budget_of
        if source:  # the run whose comparisons set this one's budget, as the runner leaves it
            setup = run_dir_of(tmp_path, source, cfg.seeds[0]) / "setup.json"
            setup.parent.mkdir(parents=True, exist_ok=True)
            setup.write_text(json.dumps({"comparisons": 12, "prompt_domains": 3}))
        if method(name).algo:
            for variant in cfg.variants(name):
                run = run_config_from_dict(sub_run_mapping(cfg, tmp_path, name, cfg.seeds[0], variant))
                assert run.algo == method(name).algo and run.steps == cfg.steps(name, variant)


def test_there_are_example_configs():
    assert len(CONFIGS) >= 5 and {p.stem for p in PROTOCOLS} >= {"protocol_quickstart", "protocol_sentiment"}
