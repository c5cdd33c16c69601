"""Run tools: re-evaluate any run, export a policy that transformers loads with the same logits, render reports."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from metapl.algorithms.policy_test import restore_policy
from metapl.cli import main
from metapl.config import ConfigError
from metapl.models import apply
from metapl.protocol import evaluate_run, export_policy
from metapl.runs import MetaTestConfig, prepare_run_dir, train
from tests.hf_reference import hf_logits, rel_err

TINY = ["data.synthetic.num_domains=12", "data.synthetic.num_heldout=6", "model.hidden_size=16", "model.num_layers=1",
        "data.synthetic.pairs_per_domain=16"]
TEST = MetaTestConfig(prompts=2, eval_prompts=3, samples_per_prompt=2, bootstrap=100, domains_per_batch=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools")
    out = {}
    for name, extra in (("dpo_lora", ["algo=dpo", "model.lora_rank=4", "optim.learning_rate=0.05"]),
                        ("rm", ["algo=rm"])):
        out[name] = root / name
        train(out[name], prepare_run_dir(out[name], None, ["steps=3", *TINY, *extra], False), progress=False)
    return out


def test_an_exported_lora_policy_loads_in_transformers_with_the_adapted_logits(runs, tmp_path):
    import torch
    import transformers as tf

    out = export_policy(runs["dpo_lora"], tmp_path / "hf")
    info = json.loads((out / "metapl_export.json").read_text())
    assert info["lora_merged"] and info["checkpoint_step"] == 3 and info["tokenizer"].startswith("not saved")
    restored = restore_policy(runs["dpo_lora"])
    params, lora = restored.trained
    assert lora is not None
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, restored.policy.config.vocab_size, size=(2, 9))
    mask = np.ones_like(tokens)
    mask[1, :2] = 0
    ours = np.asarray(apply(params, restored.policy.config, jnp.asarray(tokens), attention_mask=jnp.asarray(mask),
                            lora=lora))
    without = np.asarray(apply(params, restored.policy.config, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    assert np.abs(ours - without).max() > 1e-4  # the adapters moved the policy: the merge is being tested
    hf = tf.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert rel_err(hf_logits(hf, tokens, mask), ours, np.broadcast_to(mask[..., None], ours.shape)) <= 1e-4
    with pytest.raises(ConfigError, match="not empty"):
        export_policy(runs["dpo_lora"], out)
    with pytest.raises(ConfigError, match="trains a reward model, not a policy"):
        export_policy(runs["rm"], tmp_path / "rm_out")


def test_eval_dispatches_by_run_kind_and_the_run_report_shows_it(runs, capsys):
    policy = evaluate_run(runs["dpo_lora"], "heldout", TEST, progress=False)
    reward = evaluate_run(runs["rm"], "heldout", TEST, progress=False)
    assert policy["solver"]["kind"].startswith("none") and reward["solver"]["kind"] == "projected"
    assert (runs["dpo_lora"] / "policy_test_heldout.json").exists() and (runs["rm"] / "meta_test_heldout.json").exists()
    assert main(["report", str(runs["rm"])]) == 0
    text = capsys.readouterr().out
    assert "# Run rm: rm, 3 steps" in text and "Meta-test of" in text and (runs["rm"] / "training.png").exists()


def test_the_tools_name_what_they_cannot_use(tmp_path, capsys):
    assert main(["eval", "--run", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a protocol directory" in capsys.readouterr().err
    (tmp_path / "protocol.yaml").write_text("name: x\n")
    assert main(["report", str(tmp_path)]) == 2
    assert "has not finished" in capsys.readouterr().err
