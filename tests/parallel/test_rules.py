"""Sharding rules: which mesh axes split each parameter, written out by hand for the tiny Llama, GPT-2 and reward
models and LoRA adapters (no devices needed: the rules read only the mesh's axis sizes)."""

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from metapl.config import ConfigError
from metapl.models import LoraConfig, init_head_params, init_lora, init_params, tiny
from metapl.parallel import MeshConfig, make_mesh, param_spec


def specs(tree, mesh):
    return {jax.tree_util.keystr(path): param_spec(path, x.shape, mesh)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


MESH = AbstractMesh((2, 2, 2), ("data", "fsdp", "tensor"))


def test_llama_rules():
    got = specs(init_params(tiny("llama"), jax.random.key(0)), MESH)
    assert got == {
        "['embed']['embedding']": P("tensor", "fsdp"),
        "['lm_head']['embedding']": P("tensor", "fsdp"),
        "['final_norm']['scale']": P(None),
        "['layers']['attn']['q']['kernel']": P(None, "fsdp", "tensor"),
        "['layers']['attn']['k']['kernel']": P(None, "fsdp", "tensor"),
        "['layers']['attn']['v']['kernel']": P(None, "fsdp", "tensor"),
        "['layers']['attn']['o']['kernel']": P(None, "tensor", "fsdp"),
        "['layers']['mlp']['gate']['kernel']": P(None, "fsdp", "tensor"),
        "['layers']['mlp']['up']['kernel']": P(None, "fsdp", "tensor"),
        "['layers']['mlp']['down']['kernel']": P(None, "tensor", "fsdp"),
        "['layers']['attn_norm']['scale']": P(None, None),
        "['layers']['mlp_norm']['scale']": P(None, None),
    }


def test_gpt2_lora_and_reward_head_rules():
    got = specs(init_params(tiny("gpt2"), jax.random.key(0)), MESH)
    assert got["['pos_embed']['embedding']"] == P(None, "fsdp")
    assert got["['layers']['attn']['q']['bias']"] == P(None, "tensor")  # lives on the split output
    assert got["['layers']['attn']['o']['bias']"] == P(None, None)  # residual width: replicated
    assert got["['layers']['mlp']['up']['bias']"] == P(None, "tensor")
    cfg = tiny("llama").replace(lora=LoraConfig(rank=2, targets=("q", "o", "down")))
    got = specs(init_lora(cfg, jax.random.key(0)), MESH)
    assert got == {"['layers']['attn']['q']['a']": P(None, "fsdp", None),
                   "['layers']['attn']['q']['b']": P(None, None, "tensor"),
                   "['layers']['attn']['o']['a']": P(None, "tensor", None),
                   "['layers']['attn']['o']['b']": P(None, None, "fsdp"),
                   "['layers']['mlp']['down']['a']": P(None, "tensor", None),
                   "['layers']['mlp']['down']['b']": P(None, None, "fsdp")}
    got = specs(init_head_params(tiny("llama"), jax.random.key(0)), MESH)
    assert got["['head']['kernel']"] == P("fsdp", None) and got["['head']['bias']"] == P(None)
    assert got["['backbone']['layers']['mlp']['down']['kernel']"] == P(None, "tensor", "fsdp")


def test_an_axis_that_does_not_divide_a_dimension_leaves_it_whole():
    mesh = AbstractMesh((1, 3, 5), ("data", "fsdp", "tensor"))
    got = specs(init_params(tiny("llama"), jax.random.key(0)), mesh)  # hidden 32, kv 16, mlp 64, vocab 128
    assert got["['layers']['attn']['q']['kernel']"] == P(None, None, None)
    assert got["['embed']['embedding']"] == P(None, None)


def test_mesh_from_config():
    with pytest.raises(ValueError, match="mesh.fsdp must be >= 1"):
        MeshConfig(fsdp=0)
    with pytest.raises(ConfigError, match="only 1 are visible|only .* are visible"):
        make_mesh(MeshConfig(data=64))
    mesh = make_mesh(MeshConfig())
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
