"""Decoder-only transformers (Llama family, Qwen2, GPT-2) as pure functions of parameter pytrees.

Public surface:
  configs     ModelConfig, LoraConfig, RopeScaling, llama(), qwen2(), gpt2(), tiny()
  forward     init_params, apply (logits), hidden_states, logits_from_hidden
  decoding    KVCache, init_cache, decoding_weights, cached_forward, next_token_logits
  heads       init_head_params, reward (scalar at the last real token), values (per token)
  LoRA        init_lora, merge_lora
  log-probs   logprob_of, token_logprobs, sequence_logprobs, hidden_logprobs
  shared      packed_row, response_logprobs, response_token_logprobs, continuation_rewards, continuation_values
              (a prompt computed once for its K continuations)
  sampling    SamplingConfig, generate, generate_text, encode_prompts
  checkpoints load_pretrained, save_hf_directory, load_hf_directory, load_gguf
  runs        ModelSpec, build_model (a run's model); Policy, RewardModel (what trains, what stays frozen)
"""

from metapl.models.config import LoraConfig, ModelConfig, RopeScaling, gpt2, llama, qwen2, tiny
from metapl.models.decoding import KVCache, cached_forward, decoding_weights, init_cache, next_token_logits
from metapl.models.gguf_format import load_gguf
from metapl.models.heads import init_head_params, last_token_index, reward, values
from metapl.models.hf_format import (
    CheckpointError,
    UnsupportedConfigError,
    load_hf_directory,
    save_hf_directory,
)
from metapl.models.logprobs import hidden_logprobs, logprob_of, sequence_logprobs, token_logprobs
from metapl.models.lora import init_lora, merge_lora
from metapl.models.policy import Policy, RewardModel
from metapl.models.pretrained import ModelNotFoundError, Pretrained, load_pretrained, resolve_model
from metapl.models.sampling import (
    GenerationOutput, SamplingConfig, encode_prompts, generate, generate_text, generate_traced,
)
from metapl.models.shared_prefix import (
    continuation_rewards, continuation_values, packed_row, response_logprobs, response_token_logprobs,
)
from metapl.models.spec import ModelSpec, build_model
from metapl.models.transformer import (
    apply,
    default_positions,
    hidden_states,
    init_params,
    logits_from_hidden,
    unembedding,
    unstack_layers,
)

__all__ = ["CheckpointError", "GenerationOutput", "KVCache", "LoraConfig", "ModelConfig", "ModelNotFoundError",
           "ModelSpec", "Policy", "Pretrained", "RewardModel", "RopeScaling", "SamplingConfig",
           "UnsupportedConfigError", "apply", "build_model", "cached_forward", "continuation_rewards",
           "continuation_values", "decoding_weights", "default_positions", "encode_prompts", "generate",
           "generate_text", "generate_traced", "gpt2", "hidden_logprobs", "hidden_states", "init_cache",
           "init_head_params", "init_lora", "init_params", "last_token_index", "llama", "load_gguf",
           "load_hf_directory", "load_pretrained", "logits_from_hidden", "logprob_of", "merge_lora",
           "next_token_logits", "packed_row", "qwen2", "resolve_model", "response_logprobs",
           "response_token_logprobs", "reward", "save_hf_directory", "sequence_logprobs", "tiny", "token_logprobs",
           "unembedding", "unstack_layers", "values"]
