"""Training-step throughput on SmolLM2-135M (float32): metapl (JAX) beside TRL's `DPOTrainer`, and the effect of
metapl's shared-prefix layout (each prompt computed once for its responses, `metapl.models.shared_prefix`).

One script run, one set of weights (metapl's import of the embedded GGUF, exported with metapl's Hugging Face
exporter and loaded by transformers), one batch. Each side runs in a worker process of its own, and the parent
drives them in turn (only one computes at a time); sharing one process made metapl's step ~1.5x slower after
TRL's had run (threads and heap of the other framework). The batch: --pairs preference pairs, every sequence exactly
--prompt-tokens + --response-tokens long (the response's last token is EOS), so nothing is padded. Measured:

  metapl  DPO, reference log-probs on the fly, one row per sequence (chosen and rejected each with the prompt)
  metapl  DPO, the same with the shared prefix (one row per pair: prompt, chosen, rejected)
  TRL     DPOTrainer, reference on the fly (PyTorch CPU, --torch-threads threads)
  metapl  Bradley-Terry reward model, both layouts (full weights only)
  metapl  RLOO rollout (k samples per prompt) and its scoring, one row per sample vs prefilled once + shared
          scoring (--rollout-k; full weights only)

--lora-rank R trains LoRA adapters of rank R (alpha 2R) on every linear layer on both sides (TRL: `peft`), the
reference being the base without adapters; else all weights train and the reference is a frozen copy.

Every step is a full optimiser step (AdamW, lr --lr, global-norm clipping 1.0, constant schedule) on the same
batch. Compilation and the first steps are warm-up (--warmup steps per method, excluded). Then --rounds rounds,
each running --steps timed steps of every method in turn (interleaved, because the shared host drifts). A step
is timed to completion (metapl: block_until_ready on the new state; TRL: from its `on_step_begin` to its
`on_step_end` callback, i.e. forward + reference forward + backward + clipping + AdamW + zero_grad).

--alone keeps only one side's worker alive at a time: each round runs one side's methods, then the other's (the
order alternating over rounds, ABBA), and a worker that was closed starts afresh with its warm-up steps, so
neither side is timed beside the other's worker. With both alive, metapl's steps measured up to 20% slower than in
a metapl-only run; part of that is metapl's run-to-run spread on this VM (BUILD.md).
--breakdown N times each DPO method's parts after the rounds: its loss alone (policy and reference forward) and its
loss and gradient, N calls each.

Equal lengths: the pairs are built as token ids from texts made of words that each encode to exactly one token
with their leading space (" word"), so a text of n words is n tokens and a prompt/response boundary never
merges tokens. metapl gets prompt ⊕ response ⊕ EOS as ids; TRL gets the same texts as a `datasets.Dataset` of
prompt/chosen/rejected strings, tokenises them itself and appends EOS. The script asserts that TRL's tokenised
dataset holds exactly metapl's ids and that TRL's collated batch is [2 * pairs, prompt + response] with the same
input ids, attention mask (all ones) and completion mask as metapl's batch.

Accounting (`step_flops`): tokens are the pairs' logical tokens for every method; FLOPs are what each method
computes (the shared prefix runs fewer tokens and computes logits only where read). MFU = achieved FLOP/s / the
float32 matmul peak of JAX measured in this run (median of one measurement per round).

Allocator: the script re-executes itself with glibc's MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000
MALLOC_TOP_PAD_=1073741824 (TRL's CPU step spends much of its time in page faults otherwise), so both sides run
under the same settings; --default-malloc keeps glibc's defaults (also for both).

    python experiments/bench_train.py --suite --alone --breakdown 3 --rounds 3 --steps 2 --warmup 2  # results file
    python experiments/bench_train.py --prompt-tokens 256                                   # one case
    python experiments/bench_train.py --skip-trl --no-write                                 # metapl only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_TOP_PAD_": "1073741824"}

# Words that are (checked below) one SmolLM2 token each with a leading space. The texts are cut from this
# passage at different offsets; their meaning does not matter to a throughput benchmark.
PASSAGE = """
the river ran slowly past the old mill and the children watched the water turn the great wheel while their
mother sold bread and milk at the market in the small town near the hills where the roads met and the people
came from every farm to trade their goods for money and news about the weather the harvest the price of grain
and the health of the king who lived far away in a large house with many rooms and a garden full of trees
that gave fruit in the summer and shade in the long hot days when nobody wanted to work and the dogs slept
under the tables in the kitchen while the cook made soup for the evening meal that the whole family would
share after the sun went down behind the tall black mountains and the first stars came out over the quiet
fields where the sheep and the horses rested until the morning light woke the birds and the day began again
with the sound of bells from the church on the hill and the voices of men going out to the fields with their
tools and their food for the day ahead of them in the cold clear air of early spring when the snow had just
left the ground and the first green plants were coming up through the dark wet earth of the valley below
"""


def _reexec_with_allocator_env(default_malloc: bool) -> None:
    if default_malloc or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    env = dict(os.environ, **MALLOC_ENV)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--response-tokens", type=int, default=64, help="including the EOS that ends the response")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per method first (the first ones compile)")
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--lora-rank", type=int, default=0,
                   help="0: train all weights; > 0: LoRA adapters of this rank on every linear layer (TRL: peft)")
    p.add_argument("--rollout-k", type=int, default=4,
                   help="RLOO rollout timing: samples per prompt (--pairs prompts; 0 = skip; full weights only)")
    p.add_argument("--suite", action="store_true",
                   help="the three cases of the results file, one child run each: full weights at (64 + 64) and "
                        "(256 + 64), LoRA rank 8 at (64 + 64); writes bench_train.json/.md")
    p.add_argument("--json-out", help=argparse.SUPPRESS)  # internal: a suite child's result file
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--alone", action="store_true",
                   help="one side's worker at a time (each round: one side, then the other, ABBA), instead of both "
                        "alive for the whole case")
    p.add_argument("--default-malloc", action="store_true", help="keep glibc's allocator defaults (both sides)")
    p.add_argument("--breakdown", type=int, default=0, metavar="N",
                   help="after the rounds, time each DPO method's parts N times (loss alone, loss and gradient)")
    p.add_argument("--no-write", action="store_true", help="print, but do not write the results files")
    p.add_argument("--worker", choices=("metapl", "trl"), help=argparse.SUPPRESS)  # internal: one side's process
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------- the batch

def single_token_words(tok) -> list[str]:
    words = [w for w in PASSAGE.split() if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    if len(set(words)) < 20:
        raise RuntimeError("too few single-token words in the passage for this tokenizer")
    return words


def text_of(words: list[str], start: int, n: int) -> str:
    """n words from the cyclic word list starting at `start`, each with its leading space."""
    return "".join(" " + words[(start + i) % len(words)] for i in range(n))


def build_pairs(tok, pairs: int, prompt_tokens: int, response_tokens: int) -> list[dict]:
    """Prompt/chosen/rejected texts (responses without EOS) and their ids, each text exactly its token budget."""
    words = single_token_words(tok)
    out = []
    for i in range(pairs):
        prompt = text_of(words, 37 * i, prompt_tokens)
        chosen = text_of(words, 37 * i + 11 * pairs + 5, response_tokens - 1)
        rejected = text_of(words, 37 * i + 23 * pairs + 13, response_tokens - 1)
        ids = {k: list(tok(v, add_special_tokens=False)["input_ids"])
               for k, v in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected))}
        assert len(ids["prompt"]) == prompt_tokens, len(ids["prompt"])
        assert len(ids["chosen"]) == len(ids["rejected"]) == response_tokens - 1
        for side in ("chosen", "rejected"):  # the boundary does not merge tokens
            response = chosen if side == "chosen" else rejected
            joint = list(tok(prompt + response, add_special_tokens=False)["input_ids"])
            assert joint == ids["prompt"] + ids[side]
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "ids": ids})
    return out


def metapl_batch(pairs: list[dict], prompt_tokens: int, response_tokens: int, eos_id: int, pad_id: int) -> dict:
    import numpy as np

    from metapl.data.batching import SequenceShape, TruncationStats, collate, encode_sequence

    shape = SequenceShape(max_prompt_tokens=prompt_tokens, max_response_tokens=response_tokens - 1,
                          buckets=(prompt_tokens + response_tokens,), append_eos=True)
    stats = TruncationStats()
    length = prompt_tokens + response_tokens
    batch = {}
    for side in ("chosen", "rejected"):
        seqs = [encode_sequence(p["ids"]["prompt"], p["ids"][side], shape, eos_id, stats) for p in pairs]
        sb = collate(seqs, length, pad_id)
        batch.update({f"{side}_{k}": v for k, v in sb._asdict().items()})
    assert stats.prompts_truncated == stats.responses_truncated == 0
    assert batch["chosen_attention_mask"].all() and batch["rejected_attention_mask"].all()
    assert int(batch["chosen_response_mask"].sum()) == len(pairs) * response_tokens
    return {k: np.asarray(v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------- metapl

def block(tree):
    import jax

    return jax.block_until_ready(tree)


def timed_calls(fn, n: int) -> list[float]:
    """Seconds of n calls of `fn()` (each run to completion by `fn`), after one untimed call (compile, warm-up)."""
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


class MetaplMethod:
    """One metapl training step (objective + AdamW) with its own state, timed to completion."""

    def __init__(self, name, objective, params, frozen, batch, optimizer):
        import jax
        import jax.numpy as jnp

        from metapl.train import init_state, make_train_step

        self.name, self.objective = name, objective
        # A private copy per method: the step donates its state, and the frozen reference must survive.
        self.state = init_state(jax.tree.map(jnp.copy, params), optimizer, jax.random.key(0))
        self.frozen, self.batch = frozen, batch
        self.step_fn = make_train_step(objective, optimizer)
        self.compile_s = None
        self.last_metrics: dict = {}

    def step(self) -> float:
        t = time.perf_counter()
        self.state, metrics = self.step_fn(self.state, self.frozen, self.batch)
        block((self.state, metrics))
        dt = time.perf_counter() - t
        if self.compile_s is None:
            self.compile_s = dt
        self.last_metrics = {k: float(v) for k, v in metrics.items() if getattr(v, "ndim", 1) == 0}
        return dt

    def breakdown(self, n: int) -> dict:
        """Seconds of the step's parts at the current parameters, n timed calls each after a compiling one: the
        objective alone (policy and reference forward) and its value and gradient (+ the policy's backward)."""
        import jax

        def loss(t, f, b):
            return self.objective(t, f, b)[0]

        parts = {"loss": jax.jit(loss), "loss_and_grad": jax.jit(jax.value_and_grad(loss))}
        return {part: timed_calls(lambda: block(fn(self.state.params, self.frozen, self.batch)), n)
                for part, fn in parts.items()}


# LoRA on every linear layer, the same on both sides (metapl names, then peft's module names for SmolLM2).
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def shared_batch(batch_np: dict, args) -> dict:
    """The same pairs in metapl's shared-prefix layout: each prompt once, its two responses after it."""
    import numpy as np

    from metapl.data.batching import PairBatch, SequenceBatch

    sides = [SequenceBatch(*(batch_np[f"{s}_{k}"] for k in ("tokens", "attention_mask", "response_mask")))
             for s in ("chosen", "rejected")]
    zeros = np.zeros(args.pairs)
    out = PairBatch(*sides, zeros, zeros).shared_prefix_arrays(args.prompt_tokens, args.response_tokens, 0)
    return {k: v for k, v in out.items() if k not in ("domain", "gold_margin")}


def build_metapl(model, batch_np, args):
    """The metapl methods of this case: DPO (reference on the fly) one row per sequence and with the shared
    prefix; with full weights also the Bradley–Terry RM both ways. LoRA: adapters (B = 0) over frozen weights,
    the reference the base without adapters."""
    import jax
    import jax.numpy as jnp

    from metapl.losses.preference import dpo_objective, rm_objective
    from metapl.models import LoraConfig, init_head_params, init_lora
    from metapl.train import OptimConfig, make_optimizer

    config = model.config
    if args.lora_rank:
        config = config.replace(lora=LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank,
                                                targets=LORA_TARGETS))
    optimizer = make_optimizer(OptimConfig(learning_rate=args.lr, max_grad_norm=1.0, weight_decay=0.0))
    params = jax.device_put(model.params)
    rows = {k: jnp.asarray(v) for k, v in batch_np.items()}
    shared = {k: jnp.asarray(v) for k, v in shared_batch(batch_np, args).items()}
    methods = {}
    if args.lora_rank:
        def dpo(t, f, b):
            return dpo_objective(f, b, config=config, beta=args.beta, lora=t)

        adapters = init_lora(config, jax.random.key(1))
        for name, b in (("metapl_dpo_rows", rows), ("metapl_dpo_shared", shared)):
            methods[name] = MetaplMethod(name, dpo, adapters, params, b, optimizer)
    else:
        def dpo(t, f, b):
            return dpo_objective(t, b, config=config, beta=args.beta, ref_params=f)

        def rm(t, f, b):
            return rm_objective(t, b, config=config)

        ref_params = jax.tree.map(jnp.copy, params)
        rm_params = init_head_params(config, jax.random.key(1), backbone=params)
        for name, b in (("metapl_dpo_rows", rows), ("metapl_dpo_shared", shared)):
            methods[name] = MetaplMethod(name, dpo, params, ref_params, b, optimizer)
        for name, b in (("metapl_rm_rows", rows), ("metapl_rm_shared", shared)):
            methods[name] = MetaplMethod(name, rm, rm_params, None, b, optimizer)
    v, d = config.vocab_size, config.hidden_size
    n = int(sum(x.size for x in jax.tree.leaves(params)))
    extra = {"methods": list(methods), "n_params": n, "n_body": n - v * d, "head_vd": v * d}
    return methods, extra, (config.replace(lora=None), params)


def rollout_timing(config, params, batch_np, args, rounds: int) -> dict:
    """RLOO's rollout for --pairs prompts × k samples (temperature 1, --response-tokens new tokens, no stop
    token, so every sample is full length) and its scoring (policy and reference log-probs of every sampled
    token, no gradient): one row per sample, against each prompt prefilled once and scored in the shared layout.
    Interleaved rounds after a compiling one; median seconds of sampling, scoring and both."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from metapl.models import SamplingConfig, generate, response_token_logprobs, token_logprobs
    from metapl.models.shared_prefix import shared_inputs

    k, p = args.rollout_k, args.prompt_tokens
    prompts = batch_np["chosen_tokens"][:, :p]
    mask = np.ones_like(prompts, bool)
    sampling = SamplingConfig(max_new_tokens=args.response_tokens, temperature=1.0)
    ref = jax.tree.map(jnp.copy, params)
    score_rows = jax.jit(lambda w, b: token_logprobs(w, config, b["tokens"], attention_mask=b["attention_mask"]))
    score_shared = jax.jit(lambda w, b: response_token_logprobs(w, config, *shared_inputs(b)))

    def rows(key):
        out = block(generate(params, config, np.repeat(prompts, k, 0), np.repeat(mask, k, 0), key, sampling))
        t = time.perf_counter()
        batch = out.sequences()
        block((score_rows(params, batch), score_rows(ref, batch)))
        return time.perf_counter() - t

    def shared(key):
        out = block(generate(params, config, prompts, mask, key, sampling, num_samples=k))
        t = time.perf_counter()
        n = len(prompts)
        batch = {"prompt_tokens": out.prompt_tokens[::k], "prompt_mask": out.prompt_mask[::k],
                 "response_tokens": out.tokens.reshape(n, k, -1), "response_mask": out.mask.reshape(n, k, -1)}
        block((score_shared(params, batch), score_shared(ref, batch)))
        return time.perf_counter() - t

    times = {"rows": {"sample": [], "score": []}, "shared": {"sample": [], "score": []}}
    for r in range(rounds + 1):  # round 0 compiles
        for name, fn in (("rows", rows), ("shared", shared)):
            t = time.perf_counter()
            score_s = fn(jax.random.key(r))
            total = time.perf_counter() - t
            if r:
                times[name]["score"].append(score_s)
                times[name]["sample"].append(total - score_s)
        done = ", ".join(f"{n} {t['sample'][-1] + t['score'][-1]:.2f}s" for n, t in times.items() if r)
        print(f"  rollout round {r}: {done or 'compiled'}", file=sys.stderr, flush=True)
    out = {}
    for name, parts in times.items():
        out[name] = {part: statistics.median(v) for part, v in parts.items()}
        out[name]["total"] = statistics.median([a + b for a, b in zip(parts["sample"], parts["score"])])
        out[name]["rounds"] = parts
    out["shared_over_rows"] = out["shared"]["total"] / out["rows"]["total"]
    out["setup"] = {"prompts": len(prompts), "k": k, "prompt_tokens": p, "new_tokens": args.response_tokens}
    return out


# -------------------------------------------------------------------------------------------------------- TRL

class TRLSide:
    def __init__(self, hf_dir: Path, pairs: list[dict], batch_np: dict, args):
        import datasets
        import torch
        import transformers as tf
        from trl import DPOConfig, DPOTrainer

        torch.set_num_threads(args.torch_threads)
        self.tok = tf.AutoTokenizer.from_pretrained(str(hf_dir))
        model = tf.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
        length = args.prompt_tokens + args.response_tokens
        self.out_dir = tempfile.mkdtemp(prefix="metapl-bench-trl-")
        self.config_kwargs = dict(
            output_dir=self.out_dir, per_device_train_batch_size=args.pairs, gradient_accumulation_steps=1,
            learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0, beta=args.beta,
            loss_type=["sigmoid"], bf16=False, fp16=False, gradient_checkpointing=False,
            precompute_ref_log_probs=False, max_length=length, truncation_mode="keep_start",
            use_cpu=True, report_to="none", logging_strategy="no", save_strategy="no", eval_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0, seed=0, data_seed=0, max_steps=args.warmup,
        )
        self.DPOConfig = DPOConfig
        dataset = datasets.Dataset.from_dict({k: [p[k] for p in pairs] for k in ("prompt", "chosen", "rejected")})
        peft_config = None
        if args.lora_rank:  # the same adapters as metapl's: rank, alpha 2·rank, every linear layer, no dropout
            import peft

            peft_config = peft.LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                                          target_modules=PEFT_TARGETS, bias="none", task_type="CAUSAL_LM")
        self.trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(**self.config_kwargs),
                                  train_dataset=dataset, processing_class=self.tok, peft_config=peft_config)
        self.check_batch(pairs, batch_np, length)
        self.losses: list[dict] = []  # per compute_loss call: loss and mean summed log-probs
        self._wrap_compute_loss()
        self.step_times: list[float] = []
        self.versions = {"trl": __import__("trl").__version__, "torch": torch.__version__,
                         "torch_threads": torch.get_num_threads(), "transformers": tf.__version__}
        if args.lora_rank:
            self.versions["peft"] = __import__("peft").__version__
        self._t0 = None
        self.trainer.add_callback(self._timer())

    def check_batch(self, pairs, batch_np, length):
        import numpy as np

        ds = self.trainer.train_dataset
        eos = self.tok.eos_token_id
        for i, p in enumerate(pairs):
            assert ds[i]["prompt_ids"] == p["ids"]["prompt"], "TRL tokenised the prompt differently"
            assert ds[i]["chosen_ids"] == p["ids"]["chosen"] + [eos], "TRL tokenised a chosen response differently"
            assert ds[i]["rejected_ids"] == p["ids"]["rejected"] + [eos], \
                "TRL tokenised a rejected response differently"
        coll = self.trainer.data_collator([ds[i] for i in range(len(pairs))])
        ids, att, comp = (coll[k].numpy() for k in ("input_ids", "attention_mask", "completion_mask"))
        assert ids.shape == (2 * len(pairs), length), ids.shape
        ours = np.concatenate([batch_np["chosen_tokens"], batch_np["rejected_tokens"]])
        assert (ids == ours).all(), "TRL's collated input ids differ from metapl's"
        assert (att == 1).all()
        our_resp = np.concatenate([batch_np["chosen_response_mask"], batch_np["rejected_response_mask"]])
        assert (comp.astype(bool) == our_resp).all(), "TRL's completion mask differs from metapl's response mask"
        self.batch_shape = list(ids.shape)

    def _wrap_compute_loss(self):
        trainer, losses = self.trainer, self.losses
        original = self._compute_loss = trainer.compute_loss

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
            out = original(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            m = trainer._metrics["train"]
            losses.append({"loss": float((out[0] if return_outputs else out).detach()),
                           "chosen_logp": m["logps/chosen"][-1], "rejected_logp": m["logps/rejected"][-1]})
            return out

        trainer.compute_loss = compute_loss

    def _timer(self):
        from transformers import TrainerCallback

        side = self

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                side._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                side.step_times.append(time.perf_counter() - side._t0)

        return StepTimer()

    def breakdown(self, n: int) -> dict:
        """Seconds of the step's parts on the collated batch, n timed calls each after an untimed one: the DPO loss
        under `torch.no_grad` (policy and reference forward) and the loss with `backward()` (the step's
        `training_step` without its optimiser step; gradients cleared after each call)."""
        import torch

        trainer = self.trainer
        ds = trainer.train_dataset
        inputs = trainer._prepare_inputs(trainer.data_collator([ds[i] for i in range(len(ds))]))
        model = trainer.model
        model.train()

        def loss():
            with torch.no_grad():
                self._compute_loss(model, inputs)

        def loss_and_grad():
            self._compute_loss(model, inputs).backward()
            model.zero_grad(set_to_none=True)

        return {"loss": timed_calls(loss, n), "loss_and_grad": timed_calls(loss_and_grad, n)}

    def run(self, steps: int) -> list[float]:
        """`trainer.train()` for `steps` optimiser steps (model and optimiser state carry over between calls)."""
        self.trainer.args.max_steps = steps
        n0 = len(self.step_times)
        self.trainer.train()
        got = self.step_times[n0:]
        assert len(got) == steps, (len(got), steps)
        return got


# ---------------------------------------------------------------------------------------------------- workers

def worker_main(args) -> int:
    """One side of the benchmark in its own process, driven by JSON lines on stdin; replies on the original stdout.

    Each side gets a process of its own so neither pays for the other's threads or heap: with both in one
    process, metapl's step measured ~1.5x slower right after TRL's (same binary, same batch).
    """
    import numpy as np

    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    workdir = Path(args.workdir)
    batch_np = dict(np.load(workdir / "batch.npz"))
    pairs = json.loads((workdir / "pairs.json").read_text())

    def send(obj):
        proto.write(json.dumps(obj) + "\n")

    if args.worker == "metapl":
        from metapl.models import load_pretrained
        from metapl.runtime import enable_compile_cache

        enable_compile_cache()
        model = load_pretrained(args.model)
        methods, extra, parts = build_metapl(model, batch_np, args)
        send({"ready": True, "extra": extra})
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["cmd"] == "quit":
                break
            if msg["cmd"] == "rollout":
                send({"rollout": rollout_timing(*parts, batch_np, args, msg["rounds"])})
                continue
            if msg["cmd"] == "breakdown":
                send({"breakdown": methods[msg["method"]].breakdown(msg["n"])})
                continue
            m = methods[msg["method"]]
            times, hist = [], []
            for _ in range(msg["n"]):
                times.append(m.step())
                hist.append(m.last_metrics)
            send({"times": times, "metrics": hist, "compile_s": m.compile_s})
    else:
        trl = TRLSide(workdir / "hf", pairs, batch_np, args)
        send({"ready": True, "batch_shape": trl.batch_shape, "versions": trl.versions})
        for line in sys.stdin:
            msg = json.loads(line)
            if msg["cmd"] == "quit":
                break
            if msg["cmd"] == "breakdown":
                send({"breakdown": trl.breakdown(msg["n"])})
                continue
            n0 = len(trl.losses)
            times = trl.run(msg["n"])
            send({"times": times, "metrics": trl.losses[n0:]})
    return 0


class Worker:
    """The parent's handle on one worker process."""

    def __init__(self, side: str, workdir: Path):
        import subprocess

        argv = [a for a in sys.argv[1:]]
        self.side = side
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv, "--worker", side,
                                      "--workdir", str(workdir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        self.hello = self._recv()

    def _recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} worker exited with status {self.proc.wait()} (its log is above)")
        return json.loads(line)

    def call(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._recv()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=120)


# ------------------------------------------------------------------------------------------------------- main

def main() -> int:
    args = parse_args()
    _reexec_with_allocator_env(args.default_malloc)  # the workers inherit the environment
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.worker:
        return worker_main(args)
    if args.suite:
        return run_suite(args)

    import numpy as np

    from bench_common import machine_info, matmul_peak_gflops
    from metapl.models import load_pretrained, save_hf_directory

    model = load_pretrained(args.model)
    tok = model.tokenizer
    pairs = build_pairs(tok, args.pairs, args.prompt_tokens, args.response_tokens)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    batch_np = metapl_batch(pairs, args.prompt_tokens, args.response_tokens, eos, pad)

    workdir = Path(tempfile.mkdtemp(prefix="metapl-bench-train-"))
    np.savez(workdir / "batch.npz", **batch_np)
    (workdir / "pairs.json").write_text(json.dumps(pairs))
    if not args.skip_trl:
        save_hf_directory(workdir / "hf", model.params, model.config, tokenizer=tok)
    del model

    case = run_case(args, workdir, matmul_peak_gflops)
    info = machine_info()
    if "trl" in case:
        info.update(case["trl"]["versions"])
    payload = {"benchmark": "train_step", "machine": info, "cases": [case], "command": command_line()}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(payload))
        return 0
    return publish(payload, args)


def publish(payload: dict, args) -> int:
    """The results as markdown on stdout, and (unless --no-write) bench_train.json/.md under experiments/results."""
    from bench_common import write_results

    md = render_markdown(payload)
    if not args.no_write:
        json_path, md_path = write_results("bench_train", payload, md)
        print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    print(md)
    return 0


def command_line() -> str:
    return "python experiments/bench_train.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--json-out"))


SUITE = [  # (label, arguments, target): the results file's cases; target = shared-prefix DPO / TRL tokens/s
    ("full weights, 64 + 64", ["--prompt-tokens", "64", "--response-tokens", "64"], 1.2),
    ("full weights, 256 + 64", ["--prompt-tokens", "256", "--response-tokens", "64", "--rollout-k", "0"], 1.6),
    ("LoRA rank 8, 64 + 64", ["--prompt-tokens", "64", "--response-tokens", "64", "--lora-rank", "8",
                              "--rollout-k", "0"], 1.2),
]


def run_suite(args) -> int:
    """Each case of SUITE in a child run of this script (same --rounds/--steps/--warmup/--pairs), then one
    results file over all of them."""
    import subprocess

    passed = [a for a in sys.argv[1:] if a not in ("--suite", "--no-write")]
    cases, machine = [], None
    for label, case_args, target in SUITE:
        out = Path(tempfile.mkdtemp(prefix="metapl-bench-suite-")) / "case.json"
        print(f"== {label}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), *passed, *case_args, "--json-out", str(out)],
                       check=True)
        payload = json.loads(out.read_text())
        machine = machine or payload["machine"]
        case = payload["cases"][0]
        machine.update(case.get("trl", {}).get("versions", {}))  # peft's version from the LoRA case
        case.update(label=label, target=target)
        cases.append(case)
    payload = {"benchmark": "train_step", "machine": machine, "cases": cases, "command": command_line()}
    return publish(payload, args)


def step_flops(name: str, extra: dict, args) -> tuple[int, str]:
    """(FLOPs of one step of method `name` as computed, the formula): 2 per parameter per token for a forward, 2
    more for the activation gradients and 2 more for the weight gradients (full weights) in a trained pass; the
    LM head's V·D counted only at the positions where a method computes logits; the DPO reference adds one
    forward. Attention scores, LoRA's own small matmuls and the optimiser are not counted."""
    b, p, r = args.pairs, args.prompt_tokens, args.response_tokens
    nb, vd = extra["n_body"], extra["head_vd"]
    trained = 4 if args.lora_rank else 6
    rows, shared = 2 * b * (p + r), b * (p + 2 * r)  # tokens a forward pass runs over
    if name.startswith("metapl_rm"):
        tokens = shared if name.endswith("shared") else rows
        return 6 * nb * tokens, f"6·N_body·{tokens}"
    tokens, head = {"trl_dpo": (rows, rows), "metapl_dpo_rows": (rows, 2 * b * (p + r - 1)),
                    "metapl_dpo_shared": (shared, 2 * b * r)}[name]
    mult = trained + 2
    return mult * (nb * tokens + vd * head), f"{mult}·(N_body·{tokens} + V·D·{head})"


LABELS = {
    "metapl_dpo_rows": "metapl DPO, one row per sequence",
    "metapl_dpo_shared": "metapl DPO, shared prefix",
    "trl_dpo": "TRL DPOTrainer",
    "metapl_rm_rows": "metapl Bradley–Terry RM, one row per sequence",
    "metapl_rm_shared": "metapl Bradley–Terry RM, shared prefix",
}


def run_case(args, workdir: Path, matmul_peak_gflops) -> dict:
    """Warm-up, timed rounds and the rollout timing of one case; its results as a dict.

    Together (default): both workers live for the whole case and every method runs in each round, interleaved.
    --alone: only one side's worker exists at a time; each round runs the sides in turn (ABBA order over the
    rounds), a side's worker starting afresh (warm-up included) when the other side had run, so neither side is
    timed beside the other's worker (see the module docstring)."""
    sides = ["metapl"] + ([] if args.skip_trl else ["trl"])
    live: dict[str, Worker] = {}
    hello: dict[str, dict] = {}
    warm: dict[str, dict] = {}

    def close_all():
        for w in live.values():
            w.close()
        live.clear()

    def methods_of(side):
        return [n for n in order if (n == "trl_dpo") == (side == "trl")]

    def run(name, n):
        if name == "trl_dpo":
            return live["trl"].call(cmd="steps", n=n)
        return live["metapl"].call(cmd="steps", method=name, n=n)

    def warm_up(side):  # compiles; the first opening's first steps' losses are the agreement check
        for name in methods_of(side):
            got = run(name, args.warmup)
            warm.setdefault(name, got)
            print(f"warm-up {name}: " + ", ".join(f"{t:.2f}s loss {m['loss']:.6f}"
                                                  for t, m in zip(got["times"], got["metrics"])),
                  file=sys.stderr, flush=True)

    def open_side(side, *, fresh_warm_up: bool):
        if side in live:
            return
        if args.alone:
            close_all()
        live[side] = Worker(side, workdir)
        hello.setdefault(side, live[side].hello)
        if side == "trl":
            print(f"TRL batch shape {hello['trl']['batch_shape']}: same ids and masks as metapl's",
                  file=sys.stderr, flush=True)
        if fresh_warm_up:
            warm_up(side)

    try:
        open_side("metapl", fresh_warm_up=False)
        extra = hello["metapl"]["extra"]
        order = list(extra["methods"])
        if "trl" in sides:
            order.insert(2, "trl_dpo")
        if args.alone:
            warm_up("metapl")
        else:
            if "trl" in sides:
                open_side("trl", fresh_warm_up=False)
            for side in sides:
                warm_up(side)
        peaks, times = [], {name: [] for name in order}
        for r in range(args.rounds):
            peaks.append(matmul_peak_gflops())  # in the parent, while any worker waits
            medians = {}
            sequence = ((sides if r % 2 == 0 else sides[::-1]) if args.alone else [None])
            for side in sequence:
                if side is not None:
                    open_side(side, fresh_warm_up=True)
                for name in (methods_of(side) if side else order):
                    ts = run(name, args.steps)["times"]
                    times[name].extend(ts)
                    medians[name] = statistics.median(ts)
            print(f"round {r}: peak {peaks[-1]:.0f} GFLOP/s; " +
                  ", ".join(f"{k} {v:.2f}s" for k, v in medians.items()), file=sys.stderr, flush=True)
        breakdown = {}
        for side in (sides[::-1] if args.alone and args.rounds % 2 else sides) if args.breakdown else []:
            open_side(side, fresh_warm_up=False)  # the side still alive after the rounds goes first
            for name in [n for n in methods_of(side) if "dpo" in n]:
                msg = {"cmd": "breakdown", "n": args.breakdown, **({} if side == "trl" else {"method": name})}
                parts = live[side].call(**msg)["breakdown"]
                breakdown[name] = {k: statistics.median(v) for k, v in parts.items()} | {"all": parts}
                print(f"breakdown {name}: " + ", ".join(f"{k} {v:.2f}s" for k, v in breakdown[name].items()
                                                         if k != "all"), file=sys.stderr, flush=True)
        rollout = None
        if args.rollout_k and not args.lora_rank:
            open_side("metapl", fresh_warm_up=False)
            rollout = live["metapl"].call(cmd="rollout", rounds=args.rounds)["rollout"]
    finally:
        close_all()

    peak = statistics.median(peaks)
    logical = 2 * args.pairs * (args.prompt_tokens + args.response_tokens)
    results = {}
    for name in order:
        flops, formula = step_flops(name, extra, args)
        s = {"min": min(times[name]), "median": statistics.median(times[name]), "max": max(times[name]),
             "n": len(times[name]), "all": times[name]}
        results[name] = {"label": LABELS[name], "seconds_per_step": s, "logical_tokens_per_step": logical,
                         "tokens_per_s": logical / s["median"], "flops_per_step": flops, "flop_formula": formula,
                         "achieved_gflops": flops / s["median"] / 1e9, "mfu": flops / s["median"] / 1e9 / peak,
                         "first_step_seconds_incl_compile": warm[name]["times"][0]}
    ratios = None
    if "trl" in hello:
        trl_s = results["trl_dpo"]["seconds_per_step"]["median"]
        ratios = {name: trl_s / results[name]["seconds_per_step"]["median"]
                  for name in ("metapl_dpo_rows", "metapl_dpo_shared")}
    agreement = {name: [{"loss": m["loss"], "chosen_logp": m["chosen_logp"], "rejected_logp": m["rejected_logp"]}
                        for m in warm[name]["metrics"]] for name in order if "dpo" in name}
    return {
        "setup": {"pairs": args.pairs, "prompt_tokens": args.prompt_tokens, "response_tokens": args.response_tokens,
                  "lora_rank": args.lora_rank, "lora_targets": list(LORA_TARGETS) if args.lora_rank else None,
                  "beta": args.beta, "learning_rate": args.lr, "dtype": "float32", "rounds": args.rounds,
                  "steps_per_round": args.steps, "warmup_steps": args.warmup, "torch_threads": args.torch_threads,
                  "trl_batch_shape": hello["trl"]["batch_shape"] if "trl" in hello else None,
                  "workers": "alone" if args.alone else "together"},
        "parameters": {k: extra[k] for k in ("n_params", "n_body", "head_vd")},
        "matmul_peak_gflops_f32": peak, "matmul_peak_gflops_f32_per_round": peaks,
        "order": order, "results": results, "dpo_speedup_over_trl": ratios, "first_steps": agreement,
        "rollout": rollout, "breakdown": breakdown or None,
        **({"trl": {"versions": hello["trl"]["versions"]}} if "trl" in hello else {}),
    }


WORKER_MODES = {
    "together": "Both workers stay alive for the whole case and the methods run interleaved in every round.",
    "alone": "Only one side's worker is alive at a time (`--alone`): each round runs one side's methods, then the "
             "other's, alternating which goes first; a worker started afresh repeats its warm-up steps.",
}


def render_markdown(payload: dict) -> str:
    info = payload["machine"]
    lines = [
        "# Training step: metapl vs TRL `DPOTrainer` (SmolLM2-135M, float32)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores; jax {info['jax']}, torch {info.get('torch')} "
        f"({info.get('torch_threads')} threads), transformers {info.get('transformers')}, trl "
        f"{info.get('trl', 'not run')}, peft {info.get('peft', '-')}. Allocator env (both sides): "
        f"{info['malloc_env'] or 'glibc defaults'}. Each side runs in its own worker process; the parent drives "
        "them in turn (a step is timed to completion), after warm-up steps that compile. " + WORKER_MODES[
            payload["cases"][0]["setup"].get("workers", "together")],
        "",
        "Tokens are counted the same way for every method: the logical tokens of the pairs, 2 · pairs · (prompt + "
        "response), whatever a method actually runs. FLOPs are those a method computes: 2 per parameter per token "
        "for a forward, +2 for activation gradients and +2 for weight gradients (full weights) in a trained pass, "
        "the LM head (V·D) only at the positions where a method computes logits (TRL: every position; metapl, one "
        "row per sequence: every position but the last; shared prefix: the response tokens), one more forward for "
        "the DPO reference; N_body = parameters without the embedding/LM head. MFU = FLOPs / median step time / "
        "the f32 matmul peak of JAX measured in each round.",
        "",
    ]
    for case in payload["cases"]:
        st, res = case["setup"], case["results"]
        label = case.get("label") or (f"{'LoRA rank ' + str(st['lora_rank']) if st['lora_rank'] else 'full weights'}"
                                      f", {st['prompt_tokens']} + {st['response_tokens']}")
        lines += [
            f"## {label}",
            "",
            f"{st['pairs']} pairs, every sequence {st['prompt_tokens']} prompt + {st['response_tokens']} response "
            f"tokens (ending with EOS), identical token ids on both sides (checked); β = {st['beta']}, AdamW lr "
            f"{st['learning_rate']}, clip 1.0"
            + (f"; LoRA rank {st['lora_rank']}, alpha {2 * st['lora_rank']}, on {', '.join(st['lora_targets'])} "
               "(TRL: peft on the same projections), reference = the base without adapters" if st["lora_rank"]
               else "; reference on the fly (a frozen copy)")
            + f". {st['rounds']} rounds × {st['steps_per_round']} timed steps after {st['warmup_steps']} warm-up "
            f"steps; matmul peak median {case['matmul_peak_gflops_f32']:.0f} GFLOP/s.",
            "",
            "| method | s/step median (min–max) | logical tokens/s | FLOPs/step | GFLOP/s | MFU |",
            "|---|---|---|---|---|---|",
        ]
        for name in case["order"]:
            r = res[name]
            s = r["seconds_per_step"]
            lines.append(f"| {r['label']} | {s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f}) | "
                         f"{r['tokens_per_s']:.0f} | {r['flops_per_step'] / 1e12:.2f} T = {r['flop_formula']} | "
                         f"{r['achieved_gflops']:.1f} | {100 * r['mfu']:.1f}% |")
        lines.append("")
        ratio = case["dpo_speedup_over_trl"]
        if ratio:
            target = case.get("target")
            verdict = ""
            if target:
                verdict = (f" Target ≥ {target}x: **{'met' if ratio['metapl_dpo_shared'] >= target else 'NOT met'}**.")
            lines += [f"**metapl DPO / TRL, tokens per second: shared prefix {ratio['metapl_dpo_shared']:.2f}x, one "
                      f"row per sequence {ratio['metapl_dpo_rows']:.2f}x.**{verdict}", ""]
        first = case["first_steps"]
        lines += ["First steps (same weights and batch on every side; step 0 is at the reference, so its loss is "
                  "log 2 and the log-probs are the check):", "",
                  "| method | step | loss | mean chosen log-prob | mean rejected log-prob |", "|---|---|---|---|---|"]
        for name, steps in first.items():
            lines += [f"| {LABELS[name]} | {i} | {m['loss']:.6f} | {m['chosen_logp']:.4f} | {m['rejected_logp']:.4f} |"
                      for i, m in enumerate(steps)]
        lines.append("")
        if st["lora_rank"]:
            lines += ["With LoRA the adapters' A matrices start from each library's own random draw, so only step "
                      "0 is comparable across sides.", ""]
        bd = case.get("breakdown")
        if bd:
            lines += ["Where a DPO step's time goes (median seconds of the parts, timed separately after the rounds "
                      "at the trained parameters: the loss alone is the policy and reference forward; backward = loss "
                      "and gradient − loss). The step's median from the rounds is beside them; on this VM a worker's "
                      "step time moves by up to ~15% between processes and over a run, so the parts are not "
                      "subtracted from it:", "",
                      "| method | loss (policy + reference forward) | backward | loss and gradient | step (rounds) |",
                      "|---|---|---|---|---|"]
            for name, parts in bd.items():
                step = res[name]["seconds_per_step"]["median"]
                lines.append(f"| {LABELS[name]} | {parts['loss']:.2f} | {parts['loss_and_grad'] - parts['loss']:.2f} "
                             f"| {parts['loss_and_grad']:.2f} | {step:.2f} |")
            lines.append("")
        ro = case.get("rollout")
        if ro:
            su = ro["setup"]
            lines += [
                f"RLOO rollout, {su['prompts']} prompts × k = {su['k']} samples of {su['new_tokens']} tokens "
                f"(prompt {su['prompt_tokens']} tokens), then the policy and reference log-probs of every sampled "
                "token (median seconds over the rounds):", "",
                "| layout | sampling | scoring | total |", "|---|---|---|---|",
                f"| one row per sample | {ro['rows']['sample']:.2f} | {ro['rows']['score']:.2f} | "
                f"{ro['rows']['total']:.2f} |",
                f"| prompt prefilled once, scored with the shared prefix | {ro['shared']['sample']:.2f} | "
                f"{ro['shared']['score']:.2f} | {ro['shared']['total']:.2f} |", "",
                f"**Shared / rows: {ro['shared_over_rows']:.2f}x the time** (target ≤ 0.7x: "
                f"{'met' if ro['shared_over_rows'] <= 0.7 else 'NOT met'}).", "",
            ]
    lines += [f"Command: `{payload['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
