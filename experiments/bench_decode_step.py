"""Where a decoding step's time goes, and which matmul orientation XLA:CPU runs fastest.

SmolLM2-135M, batch 16, one token per step, 80-slot KV cache. Times a loop of --steps steps (one compiled
program, so no dispatch overhead is counted) of:

- the sampler's step (`metapl.models.decoding.cached_forward` + LM head + argmax), with and without the head,
  and the LM head alone;
- all matmuls of a step (fused q/k/v, o, fused gate/up, down, LM head) and nothing else, in the two
  orientations: feature-major `W [out, in] @ x [in, B]` (what `decoding.py` does) and batch-major
  `x [B, in] @ W [in, out]` (the training forward's layout).

Each is compiled with XLA:CPU's default dot library (YNNPACK) and with XNNPACK dots. Rounds are interleaved;
the minimum over rounds is reported (the host's speed drifts; the minimum is the least disturbed run).

    python experiments/bench_decode_step.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

XNNPACK_DOTS = {
    "xla_cpu_experimental_ynn_fusion_type": "",
    "xla_cpu_experimental_xnn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cache-slots", type=int, default=80)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp

    from bench_common import machine_info, matmul_peak_gflops, write_results
    from metapl.models import cached_forward, decoding_weights, init_cache, load_pretrained, next_token_logits

    model = load_pretrained("smollm2-135m")
    config = model.config
    weights = jax.block_until_ready(jax.jit(decoding_weights, static_argnames="config")(model.params, config))
    b, n, d = args.batch, args.steps, config.hidden_size
    cache = init_cache(config, b, args.cache_slots)
    token = jnp.ones((b, 1), jnp.int32)

    def step(w, c, t):
        def body(_, carry):
            c, t = carry
            h, c = cached_forward(w, config, t, c)
            return c, jnp.argmax(next_token_logits(w, config, h[:, :, 0]), axis=0)[:, None].astype(jnp.int32)
        return jax.lax.fori_loop(0, n, body, (c, t))

    def step_without_head(w, c, t):
        def body(_, carry):
            c, t, acc = carry
            h, c = cached_forward(w, config, t, c)
            return c, t, acc + h[:8, :, 0].sum()
        return jax.lax.fori_loop(0, n, body, (c, t, 0.0))

    def head_only(w, c, t):
        def body(_, x):
            return x + 1e-6 * next_token_logits(w, config, x)[:d]
        return jax.lax.fori_loop(0, n, body, jnp.ones((d, b)))

    def matmuls(w, batch_first):
        q_rows, f = config.num_heads * config.dim_per_head, config.intermediate_size

        def feature_major(_, x):  # x [D, B], matrices [out, in]
            for layer in w["layers"]:
                x = x + layer["o"] @ (layer["qkv"] @ x)[:q_rows]
                up = layer["up"] @ x
                x = x + layer["down"] @ (up[:f] * up[f:])
            return x + 1e-6 * (w["head"] @ x)[:d]

        def batch_major(_, x):  # x [B, D], matrices [in, out]
            for layer in w["layers"]:
                x = x + (x @ layer["qkv"])[:, :q_rows] @ layer["o"]
                up = x @ layer["up"]
                x = x + (up[:, :f] * up[:, f:]) @ layer["down"]
            return x + 1e-6 * (x @ w["head"])[:, :d]

        if batch_first:
            return jax.lax.fori_loop(0, n, batch_major, 0.01 * jnp.ones((b, d)))
        return jax.lax.fori_loop(0, n, feature_major, 0.01 * jnp.ones((d, b)))

    transposed = jax.block_until_ready(jax.jit(lambda w: dict(w, head=w["head"].T, layers=[
        {k: layer[k].T for k in ("qkv", "o", "up", "down")} for layer in w["layers"]]))(weights))
    variants = {
        "sampler step (cached_forward + LM head + argmax)": (step, (weights, cache, token)),
        "step without LM head": (step_without_head, (weights, cache, token)),
        "LM head only": (head_only, (weights, cache, token)),
        "matmuls only, feature-major W @ x": (lambda w: matmuls(w, False), (weights,)),
        "matmuls only, batch-major x @ W": (lambda w: matmuls(w, True), (transposed,)),
    }
    libraries = {"default (YNNPACK)": None, "XNNPACK dots": XNNPACK_DOTS}
    compiled = {}
    for name, (fn, fn_args) in variants.items():
        for lib, options in libraries.items():
            f = jax.jit(fn, compiler_options=options)
            jax.block_until_ready(f(*fn_args))
            compiled[(name, lib)] = (f, fn_args)
    best = {key: float("inf") for key in compiled}
    for _ in range(args.rounds):
        for key, (f, fn_args) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*fn_args))
            best[key] = min(best[key], (time.perf_counter() - t0) / n * 1000)

    info = machine_info()
    info["matmul_peak_gflops_f32"] = matmul_peak_gflops()
    results = [{"part": name, "dot_library": lib, "ms_per_step": ms} for (name, lib), ms in best.items()]
    lines = ["# One decoding step of SmolLM2-135M on CPU, by part", "",
             f"Batch {b}, {args.cache_slots} cache slots, float32; minimum over {args.rounds} interleaved rounds of "
             f"{n} steps. Machine: {info['cpu']}, {info['cores']} cores, jax {info['jax']}, f32 matmul peak "
             f"{info['matmul_peak_gflops_f32']:.0f} GFLOP/s.", "",
             "| part | " + " | ".join(f"{lib} ms/step" for lib in libraries) + " |",
             "|---|" + "---|" * len(libraries)]
    for name in variants:
        lines.append(f"| {name} | " + " | ".join(f"{best[(name, lib)]:.1f}" for lib in libraries) + " |")
    lines += ["", "Command: `python experiments/bench_decode_step.py " + " ".join(sys.argv[1:]) + "`", ""]
    payload = {"benchmark": "decode_step", "batch": b, "cache_slots": args.cache_slots, "steps": n,
               "rounds": args.rounds, "machine": info, "results": results}
    write_results("bench_decode_step", payload, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
