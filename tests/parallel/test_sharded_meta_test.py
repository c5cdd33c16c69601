"""Meta-test on a mesh: a chunk's domains split over data x fsdp and the weights laid out by the rules give the
same per-domain numbers as one device (simulated CPU devices, tests/conftest.py); a chunk size the mesh does not
divide is refused."""

import dataclasses

import pytest

from metapl.config import ConfigError
from metapl.runs import MetaTestConfig, meta_test
from metapl.parallel import MeshConfig
from metapl.runs import prepare_run_dir, train
from tests.meta.test_meta_run import TINY


def test_sharded_meta_test_equals_one_device(tmp_path):
    run = tmp_path / "rm"
    train(run, prepare_run_dir(run, None, ["algo=rm", "steps=2"] + TINY[1:], False), progress=False)
    test = MetaTestConfig(prompts=2, eval_prompts=4, samples_per_prompt=2, bootstrap=50, domains_per_batch=4)
    want = meta_test(run, "heldout", test, write=False, progress=False)
    got = meta_test(run, "heldout", dataclasses.replace(test, mesh=MeshConfig(data=2, fsdp=2)), write=False,
                    progress=False)
    assert got["test"]["mesh"]["fsdp"] == 2 and len(got["per_domain"]) == len(want["per_domain"]) == 6
    for a, b in zip(want["per_domain"], got["per_domain"]):
        assert a["domain"] == b["domain"]
        for key in ("gold_adapted", "gold_reference", "rm_pair_accuracy", "inner_loss_first", "inner_loss_last"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["domain"], key)
    with pytest.raises(ConfigError, match="domains_per_batch = 6 does not split over mesh data x fsdp = 4"):
        MetaTestConfig(domains_per_batch=6, mesh=MeshConfig(data=4))


def test_meta_test_command_refuses_a_chunk_the_mesh_does_not_divide(tmp_path, capsys):
    from metapl.cli import main

    assert main(["meta-test", "--run", str(tmp_path), "--domains-per-batch", "6", "--mesh-data", "4"]) == 2
    assert "domains_per_batch = 6 does not split over mesh data x fsdp = 4" in capsys.readouterr().err
