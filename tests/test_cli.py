"""The `metapl` command: it runs, and bad input ends with status 2 and one line, never a traceback."""

import subprocess
import sys

import jax
import pytest

from metapl.models import init_params, save_hf_directory, tiny
from tests.gguf_fixture import tiny_tokenizer


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "metapl.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    tok = tiny_tokenizer()
    config = tiny("llama", vocab_size=len(tok))
    directory = tmp_path_factory.mktemp("cli") / "tiny-llama"
    save_hf_directory(directory, init_params(config, jax.random.key(0)), config, tokenizer=tok)
    return directory


def test_sample_prints_prompt_and_continuation(tiny_model_dir):
    out = run_cli("sample", "--model", str(tiny_model_dir), "--prompt", "the cat", "--prompt", "and the",
                  "--max-new-tokens", "3", "--temperature", "0.8", "--top-k", "20")
    assert out.returncode == 0, out.stderr
    blocks = out.stdout.split("---\n")
    assert blocks[0].startswith("the cat") and blocks[1].startswith("and the")
    assert "Traceback" not in out.stderr


def test_sample_on_a_mesh_prints_the_one_device_text(tiny_model_dir):
    # 8 simulated devices (tests/conftest.py's XLA_FLAGS reach the subprocess); 4 prompts split over data x fsdp
    prompts = [arg for p in ("the cat", "and the", "a", "the the cat") for arg in ("--prompt", p)]
    args = ("sample", "--model", str(tiny_model_dir), *prompts, "--max-new-tokens", "4", "--temperature", "0.9",
            "--seed", "5")
    one = run_cli(*args)
    sharded = run_cli(*args, "--mesh-data", "2", "--mesh-fsdp", "2")
    assert one.returncode == 0 and sharded.returncode == 0, (one.stderr, sharded.stderr)
    assert sharded.stdout == one.stdout and sharded.stdout.count("---\n") == 4
    assert "on a data 2 x fsdp 2 x tensor 1 mesh" in sharded.stderr
    _assert_usage_error(run_cli(*args, "--mesh-fsdp", "16"), "mesh: data x fsdp x tensor = 1 x 16 x 1 = 16")


def _assert_usage_error(out, *fragments):
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, last


def test_unknown_model(tmp_path):
    _assert_usage_error(run_cli("sample", "--model", "no-such-model", "--prompt", "x"), "no-such-model",
                        "not found")
    _assert_usage_error(run_cli("sample", "--model", str(tmp_path), "--prompt", "x"), "no config.json")


def test_missing_weights(tiny_model_dir, tmp_path):
    import shutil

    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").unlink()
    _assert_usage_error(run_cli("sample", "--model", str(broken), "--prompt", "x"), "no *.safetensors")


def test_bad_arguments(tiny_model_dir, tmp_path):
    _assert_usage_error(run_cli("sample", "--model", str(tiny_model_dir)), "--prompt")
    _assert_usage_error(run_cli("sample", "--model", str(tiny_model_dir), "--prompt", "x", "--max-new-tokens", "-3"),
                        "positive integer")
    _assert_usage_error(run_cli("sample", "--model", str(tiny_model_dir), "--prompts-file", str(tmp_path / "none")),
                        "--prompts-file")
    _assert_usage_error(run_cli("sample", "--model", str(tiny_model_dir), "--prompt", "x", "--top-p", "1.5"),
                        "--top-p")
    _assert_usage_error(run_cli("sample", "--model", str(tiny_model_dir), "--prompt", "x", "--top-k", "-2"),
                        "--top-k")
    _assert_usage_error(run_cli("sample", "--model", str(tiny_model_dir), "--prompt", "x", "--temperature", "hot"),
                        "--temperature")
