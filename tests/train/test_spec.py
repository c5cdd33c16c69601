"""Typed run configs: each algorithm's sections are dataclasses with one default each; unknown keys are named; the
run directory stores the fully resolved config and reads it back; configs written by earlier versions load."""

import dataclasses

import pytest
import yaml

from metapl.config import ConfigError, to_dict
from metapl.runs import algorithm_names, load_run_config, prepare_run_dir, read_run_config
from metapl.train.spec import algorithm

SECTIONS = {  # every algorithm's own sections
    "rm": ["loss", "meta"], "dpo": ["loss"], "ipo": ["loss"], "tree-rm": ["loss", "tree", "meta"], "srpo": ["loss"],
    "mle-filter": ["offline", "reward"], "rwr": ["offline", "reward"], "dt": ["offline", "reward"],
    "rloo": ["loss", "reward"], "ppo": ["loss", "ppo", "reward"],
    "meta": ["meta"],
}


def test_every_algorithm_is_registered_with_its_sections():
    assert sorted(SECTIONS) == algorithm_names()
    for algo, sections in SECTIONS.items():
        cfg = load_run_config(None, [f"algo={algo}"])
        assert type(cfg) is algorithm(algo).config and cfg.algo == algo
        for section in sections:
            assert dataclasses.is_dataclass(getattr(cfg, section)), (algo, section)


@pytest.mark.parametrize("algo", sorted(SECTIONS))
def test_an_unknown_key_in_an_algorithm_section_is_named(algo):
    for section in SECTIONS[algo]:
        with pytest.raises(ConfigError, match=rf"unknown key\(s\) {section}\.nope"):
            load_run_config(None, [f"algo={algo}", f"{section}.nope=1"])


def test_a_section_of_another_algorithm_is_refused():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) ppo"):
        load_run_config(None, ["algo=dpo", "ppo.beta=0.1"])
    with pytest.raises(ConfigError, match="loss.beta: expected a number, got 'high'"):
        load_run_config(None, ["algo=dpo", "loss.beta=high"])
    with pytest.raises(ConfigError, match="offline.filter: expected one of"):
        load_run_config(None, ["algo=rwr", "offline.filter=top"])


def test_the_stored_config_is_fully_resolved_and_round_trips(tmp_path):
    cfg = prepare_run_dir(tmp_path / "run", None, ["algo=tree-rm", "data.max_response_tokens=10", "seed=3"], False)
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    # defaults are written, including the ones derived from the rest of the config
    assert stored["loss"] == {"centering": 0.0}
    assert stored["tree"]["segment_tokens"] == 5 and stored["tree"]["seed"] == 3
    assert stored["tree"]["separators"] == []  # synthetic_domains: segments cut by length
    assert stored["optim"]["learning_rate"] == 1e-3 and stored["data"]["eval_fraction"] == 0.25
    again = read_run_config(tmp_path / "run")
    assert again == cfg and to_dict(again) == stored
    # a value the user gives wins over a derived default
    assert load_run_config(None, ["algo=tree-rm", "tree.segment_tokens=3"]).tree.segment_tokens == 3


def test_a_run_reads_back_what_it_ran_not_todays_defaults(tmp_path):
    prepare_run_dir(tmp_path / "rm", None, ["algo=rm"], False)
    path = tmp_path / "rm" / "config.yaml"
    stored = yaml.safe_load(path.read_text())
    stored["meta"]["inner_steps"] = 7  # as if the run had been made when the default was 7
    path.write_text(yaml.safe_dump(stored))
    assert read_run_config(tmp_path / "rm").meta.inner_steps == 7


def test_a_config_written_before_typed_sections_loads(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    old = to_dict(load_run_config(None, ["algo=tree-rm"]))
    del old["tree"]
    old.update(loss={}, offline={}, ppo={}, meta={}, precompute_reference=False)  # every section, empty
    old["data"]["tree"] = {"pairs_per_tree": 2}
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = read_run_config(run)
    assert cfg.tree.pairs_per_tree == 2 and cfg.tree.depth == 2
    # a non-empty section the algorithm does not take is refused, by name
    old["ppo"] = {"beta": 0.1}
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match=r"config.yaml: unknown key\(s\) ppo"):
        read_run_config(run)


def test_a_config_written_before_shared_prefix_keeps_separate_rows(tmp_path):
    """A stored model section without `shared_prefix` was trained one row per sequence; resuming keeps that."""
    prepare_run_dir(tmp_path / "dpo", None, ["algo=dpo"], False)
    path = tmp_path / "dpo" / "config.yaml"
    stored = yaml.safe_load(path.read_text())
    assert stored["model"]["shared_prefix"] is True  # today's default, written out
    del stored["model"]["shared_prefix"]
    path.write_text(yaml.safe_dump(stored))
    assert read_run_config(tmp_path / "dpo").model.shared_prefix is False
