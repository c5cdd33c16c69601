"""Time and peak memory of one hypergradient vs the number of inner steps K, per method, on a small transformer.

Problem: the meta-learned reward model's per-domain bilevel problem (`metapl.meta.metagrad.domain_problem`):
projected inner loss on P prompts x N reference samples, DPO-agreement outer loss on Q pairs, inner SGD,
meta-parameter = the samples' rewards [P, N]. Policy: a Llama-style transformer (--hidden, --layers), with
θ = LoRA adapters over frozen weights, or θ = all weights.

Methods: unrolled, unrolled with `jax.checkpoint` per inner step, unrolled by the adjoint loop (stored carries,
forward-over-reverse second-order products; `adjoint=True`), implicit (CG, --cg-iterations, damping --damping),
first-order. For each K and method:
  time    median of --repeats calls of the jit-compiled hypergradient (after one warm-up call), and the time of
          its K inner steps alone (a jit-compiled `inner_solve`), measured in the same loop; ratio = the two.
  memory  XLA's compiled memory analysis (deterministic on CPU): peak = temp + arguments + outputs, the buffers
          live during the call; the single-inner-step program (value_and_grad + update) is the unit.
Targets (LoRA θ): implicit peak flat in K (K=64 / K=1 <= 1.2); unrolled with rematerialisation (checkpoint, and
the adjoint loop) peak <= 2x one inner step's at K=16; hypergradient time <= 3x the time of its K inner steps.
For full-weight θ each method's peak per extra inner step is reported in parameter copies (4 bytes per entry).

    python experiments/bench_hypergrad.py            # K in 1, 4, 16, 64 (~10 min on 2 cores)
    python experiments/bench_hypergrad.py --quick    # K in 1, 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

METHODS = {
    "unrolled": ("unrolled", {"checkpoint": False}),
    "unrolled+checkpoint": ("unrolled", {"checkpoint": True}),
    "unrolled+adjoint": ("unrolled", {"adjoint": True}),
    "implicit": ("implicit", None),  # options filled from args
    "first_order": ("first_order", {}),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default="1,4,16,64")
    p.add_argument("--quick", action="store_true", help="K in 1, 4")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--cg-iterations", type=int, default=10)
    p.add_argument("--damping", type=float, default=1e-3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    return p.parse_args()


def build(args, kind: str):
    """(policy config, base or None, θ₀, support, query with reference log-probs) for θ kind 'lora' or 'full'."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from metapl.meta.metagrad import with_reference_logprobs
    from metapl.models import LoraConfig, init_lora, init_params, llama

    config = llama(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers, num_heads=4,
                   num_kv_heads=2, intermediate_size=2 * args.hidden, max_position_embeddings=256)
    params = init_params(config, jax.random.PRNGKey(0))
    if kind == "lora":
        config = config.replace(lora=LoraConfig(rank=args.lora_rank, targets=("q", "v", "up", "down")))
        theta0 = init_lora(config, jax.random.PRNGKey(1))
        theta0 = jax.tree.map(lambda x: x + 0.01, theta0)  # B != 0: not LoRA's saddle start
        base = params
    else:
        theta0, base = params, None
    rng = np.random.default_rng(0)
    t, resp = args.length, args.length // 2
    rmask = np.zeros(t, bool)
    rmask[t - resp:] = True

    def seqs(*lead):
        return {"tokens": jnp.asarray(rng.integers(1, args.vocab, size=(*lead, t))),
                "attention_mask": jnp.ones((*lead, t), bool),
                "response_mask": jnp.broadcast_to(jnp.asarray(rmask), (*lead, t))}

    support = seqs(args.prompts, args.samples)
    query = {}
    for side in ("chosen", "rejected"):
        query.update({f"{side}_{k}": v for k, v in seqs(args.pairs).items()})
    query = with_reference_logprobs(theta0, base, config, query)
    return config, base, theta0, support, query


def memory(compiled) -> dict:
    ma = compiled.memory_analysis()
    out = {k: int(getattr(ma, k)) for k in ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")}
    out["peak_bytes"] = out["temp_size_in_bytes"] + out["argument_size_in_bytes"] + out["output_size_in_bytes"]
    return out


def timed(fn, args, repeats: int) -> list[float]:
    import jax

    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return ts


def bench_kind(args, kind: str, ks: list[int]) -> dict:
    import dataclasses

    import jax
    import jax.numpy as jnp
    import optax

    from bench_common import summarize
    from metapl.bilevel import hypergradient, inner_solve
    from metapl.meta.metagrad import MetaConfig, domain_problem

    config, base, theta0, support, query = build(args, kind)
    n_theta = int(sum(x.size for x in jax.tree.leaves(theta0)))
    rewards = jnp.asarray(jax.random.normal(jax.random.PRNGKey(2), (args.prompts, args.samples)))
    base_cfg = MetaConfig(beta=0.5, beta_out=1.0, inner_lr=0.01, prox=0.0)

    # One inner step (value_and_grad + SGD update): the memory unit.
    problem1 = domain_problem(dataclasses.replace(base_cfg, inner_steps=1), config, base, theta0)

    def one_step(r, theta):
        _, g = problem1.value_and_grad(theta, r, support)
        updates, _ = problem1.inner_optimizer.update(g, problem1.inner_optimizer.init(theta), theta)
        return optax.apply_updates(theta, updates)

    step_mem = memory(jax.jit(one_step).lower(rewards, theta0).compile())
    rows = []
    for k in ks:
        cfg = dataclasses.replace(base_cfg, inner_steps=k)
        problem = domain_problem(cfg, config, base, theta0)
        solve = jax.jit(lambda r: inner_solve(problem, jax.lax.stop_gradient(r), theta0, support)[0])
        solve_ts = timed(solve, (rewards,), args.repeats)
        for name, (method, opts) in METHODS.items():
            if opts is None:
                opts = {"solver": "cg", "iterations": args.cg_iterations, "damping": args.damping}
            fn = jax.jit(lambda r, method=method, opts=opts: hypergradient(problem, r, theta0, support, query,
                                                                          method=method, **opts)[:2])
            t0 = time.perf_counter()
            mem = memory(fn.lower(rewards).compile())
            compile_s = time.perf_counter() - t0
            ts = timed(fn, (rewards,), args.repeats)
            # the inner solve again, right after, so the ratio compares neighbouring measurements
            solve_ts += timed(solve, (rewards,), 1)
            row = {"kind": kind, "K": k, "method": name, "seconds": summarize(ts),
                   "inner_steps_seconds": statistics.median(solve_ts),
                   "time_ratio": statistics.median(ts) / statistics.median(solve_ts),
                   "memory": mem, "peak_mb": mem["peak_bytes"] / 2**20,
                   "peak_ratio_to_one_step": mem["peak_bytes"] / step_mem["peak_bytes"], "compile_seconds": compile_s}
            rows.append(row)
            print(f"{kind} K={k:3d} {name:20s} {row['seconds']['median']:.3f}s "
                  f"(x{row['time_ratio']:.2f} of K inner steps) peak {row['peak_mb']:.1f} MB "
                  f"(x{row['peak_ratio_to_one_step']:.2f} one step)", file=sys.stderr, flush=True)
    return {"theta_parameters": n_theta, "one_inner_step_memory": step_mem, "rows": rows}


def main() -> int:
    args = parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import machine_info, write_results
    from metapl.runtime import enable_compile_cache

    enable_compile_cache()
    ks = [1, 4] if args.quick else [int(x) for x in args.ks.split(",")]
    results = {kind: bench_kind(args, kind, ks) for kind in ("lora", "full")}

    def row(kind, k, method):
        return next(r for r in results[kind]["rows"] if r["K"] == k and r["method"] == method)

    checks = {}
    lo, hi = min(ks), max(ks)
    checks["implicit_peak_flat"] = {
        "value": (row("lora", hi, "implicit")["memory"]["peak_bytes"]
                  / row("lora", lo, "implicit")["memory"]["peak_bytes"]),
        "target": f"<= 1.2 (K={hi} / K={lo}, LoRA)"}
    if 16 in ks:
        for method in ("unrolled+checkpoint", "unrolled+adjoint"):
            checks[f"{method}_peak_K16"] = {"value": row("lora", 16, method)["peak_ratio_to_one_step"],
                                            "target": "<= 2.0 x one inner step (K=16, LoRA)"}
    for method in METHODS:
        checks[f"time_ratio_{method}_K{hi}"] = {"value": row("lora", hi, method)["time_ratio"],
                                                 "target": f"<= 3.0 x its {hi} inner steps (LoRA)"}
    for c in checks.values():
        c["met"] = c["value"] <= float(c["target"].split()[1])
    slopes = {}  # full-weight θ: peak bytes per extra inner step, between the two largest K (past K=1's inlining)
    for method in METHODS:
        full = [r for r in results["full"]["rows"] if r["method"] == method][-2:]
        per_step = ((full[-1]["memory"]["peak_bytes"] - full[0]["memory"]["peak_bytes"])
                    / max(full[-1]["K"] - full[0]["K"], 1))
        slopes[method] = {"bytes_per_step": per_step,
                          "parameter_copies": per_step / (4 * results["full"]["theta_parameters"])}

    info = machine_info()
    command = "python experiments/bench_hypergrad.py " + " ".join(sys.argv[1:])
    payload = {"benchmark": "hypergradient", "setup": vars(args), "machine": info, "results": results,
               "checks": checks, "full_weight_bytes_per_extra_step": slopes, "command": command}
    lines = ["# One hypergradient vs K (small transformer)", "",
             f"Machine: {info['cpu']}, {info['cores']} cores; jax {info['jax']}. Model: hidden {args.hidden}, "
             f"{args.layers} layers, vocab {args.vocab}; {args.prompts} prompts x {args.samples} samples, "
             f"{args.pairs} query pairs, length {args.length}. θ: LoRA rank {args.lora_rank} "
             f"({results['lora']['theta_parameters']:,} parameters) or all weights "
             f"({results['full']['theta_parameters']:,}). Peak = XLA compiled temp + argument + output bytes. "
             f"Time: median of {args.repeats} calls; ratio to the same K inner steps without the hypergradient.", ""]
    for kind in ("lora", "full"):
        unit = results[kind]["one_inner_step_memory"]["peak_bytes"] / 2**20
        lines += [f"## θ = {'LoRA adapters' if kind == 'lora' else 'all weights'} (one inner step: {unit:.1f} MB)",
                  "", "| K | method | s (median) | x K inner steps | peak MB | x one step |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['K']} | {r['method']} | {r['seconds']['median']:.3f} | {r['time_ratio']:.2f} | "
                  f"{r['peak_mb']:.1f} | {r['peak_ratio_to_one_step']:.2f} |" for r in results[kind]["rows"]]
        lines.append("")
    lines += ["## Targets", "", "| check | value | target | met |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['value']:.2f} | {v['target']} | {'yes' if v['met'] else 'NO'} |" for k, v in checks.items()]
    k0, k1 = ks[-2:] if len(ks) > 1 else (ks[0], ks[0])
    lines += ["", f"## Full-weight θ: peak memory per extra inner step (K={k0} to K={k1})", "",
              "| method | MB per step | parameter copies (4 bytes per θ entry) |", "|---|---|---|"]
    lines += [f"| {m} | {v['bytes_per_step'] / 2**20:.2f} | {v['parameter_copies']:.2f} |" for m, v in slopes.items()]
    lines += ["", f"Command: `{command}`", ""]
    md = "\n".join(lines)
    if not args.no_write:
        write_results("bench_hypergrad", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
