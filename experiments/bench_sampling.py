"""Batched greedy sampling on SmolLM2-135M: metapl (JAX, KV cache) beside transformers' PyTorch `generate`.

Both sides run in this one process on the same float32 weights (metapl's import of the embedded GGUF,
exported with metapl's own Hugging Face exporter and loaded by transformers) and the same tokenised,
left-padded prompts, generating exactly --new-tokens tokens with no stop token. Runs are interleaved
(metapl, transformers, metapl, ...) because the shared host's speed drifts; the reported ratio is the
median of per-round ratios. Timing covers one whole generate call (prefill + decoding); compilation and
the first PyTorch call are warm-up and excluded.

    python experiments/bench_sampling.py              # batch 1 and 16, 64 new tokens, 5 rounds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPTS = [
    "The capital of France is", "Once upon a time, in a small village,", "The best way to learn a language is",
    "Photosynthesis is the process by which", "My favourite recipe for a rainy day", "In 1969, the first humans",
    "The stock market today", "Here is a short poem about the sea:", "To install Python on Linux,",
    "The main causes of the French Revolution were", "A healthy breakfast should include",
    "The difference between a virus and a bacterium", "Dear hiring manager,", "The rules of chess are simple:",
    "Climate change affects", "Write a haiku about autumn:",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch
    import transformers as tf

    from bench_common import machine_info, matmul_peak_gflops, summarize, write_results
    from metapl.models import SamplingConfig, generate, load_pretrained, save_hf_directory
    from metapl.models.sampling import encode_prompts
    from metapl.runtime import enable_compile_cache

    enable_compile_cache()
    model = load_pretrained(args.model)
    tok = model.tokenizer
    hf_dir = Path(tempfile.mkdtemp(prefix="metapl-bench-hf-"))
    save_hf_directory(hf_dir, model.params, model.config, tokenizer=tok)
    hf = tf.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    params = jax.device_put(model.params)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    rows, payload_rows = [], []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        prompts = (PROMPTS * (batch // len(PROMPTS) + 1))[:batch]
        ids, mask = encode_prompts(tok, prompts)
        # Both sides see the same left-padded tensors; transformers gets positions from the mask as usual.
        torch_ids, torch_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

        def run_metapl():
            out = generate(params, model.config, ids, mask, jax.random.key(0), sampling, pad_id=pad)
            return np.asarray(out.tokens)

        def run_torch():
            with torch.no_grad():
                out = hf.generate(input_ids=torch_ids, attention_mask=torch_mask, max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=pad,
                                  eos_token_id=None)
            return out[:, ids.shape[1]:].numpy()

        t0 = time.perf_counter()
        ours = run_metapl()
        compile_s = time.perf_counter() - t0
        theirs = run_torch()
        agree = float((ours == theirs).mean())
        t_ours, t_theirs, ratios = [], [], []
        for r in range(args.rounds):
            t = time.perf_counter()
            run_metapl()
            a = time.perf_counter() - t
            t = time.perf_counter()
            run_torch()
            b = time.perf_counter() - t
            t_ours.append(a)
            t_theirs.append(b)
            ratios.append(b / a)
            print(f"batch {batch} round {r}: metapl {a:.2f}s, transformers {b:.2f}s, ratio {b / a:.2f}",
                  file=sys.stderr, flush=True)
        tokens = batch * args.new_tokens
        row = {
            "batch": batch,
            "new_tokens": args.new_tokens,
            "prompt_bucket": int(ids.shape[1]),
            "metapl_seconds": summarize(t_ours),
            "transformers_seconds": summarize(t_theirs),
            "metapl_tokens_per_s": tokens / statistics.median(t_ours),
            "transformers_tokens_per_s": tokens / statistics.median(t_theirs),
            "ratio_median_of_rounds": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "greedy_token_agreement": agree,
            "metapl_first_call_seconds_incl_compile": compile_s,
        }
        payload_rows.append(row)
        rows.append(
            f"| {batch} | {args.new_tokens} | {row['metapl_tokens_per_s']:.1f} "
            f"| {row['transformers_tokens_per_s']:.1f} "
            f"| **{row['ratio_median_of_rounds']:.2f}x** ({row['ratio_min']:.2f}–{row['ratio_max']:.2f}) "
            f"| {agree:.3f} |"
        )

    info = machine_info()
    info["matmul_peak_gflops_f32"] = matmul_peak_gflops()
    payload = {"benchmark": "sampling", "model": args.model, "rounds": args.rounds, "machine": info,
               "results": payload_rows, "command": "python experiments/bench_sampling.py " + " ".join(sys.argv[1:])}
    md = "\n".join([
        "# Batched greedy sampling: metapl vs transformers `generate` (SmolLM2-135M, float32)",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores; jax {info['jax']}, torch {info.get('torch')} "
        f"({info.get('torch_threads')} threads), transformers {info.get('transformers')}. "
        f"Measured f32 matmul peak (JAX): {info['matmul_peak_gflops_f32']:.0f} GFLOP/s.",
        "",
        f"Same weights and prompts, {args.rounds} interleaved rounds; tokens/s from the median time of a whole "
        "generate call (prefill + decode); ratio = median over rounds of transformers time / metapl time.",
        "",
        "| batch | new tokens | metapl tok/s | transformers tok/s | speed-up (min–max) | greedy token agreement |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Command: `{payload['command']}`",
        "",
    ])
    json_path, md_path = write_results("bench_sampling", payload, md)
    print(md)
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
