"""Where a decoding step's time goes: SmolLM2-135M, batch 16, one token per step, 80-slot KV cache.

Times a loop of --steps decoding steps (compiled as one program, so no dispatch overhead is counted) and
the same loop with parts removed: no LM head, the LM head alone, the MLP matmuls alone, the attention
projections alone. Each variant is compiled with XLA:CPU's default dot library (YNNPACK) and with the
XNNPACK option that `metapl.models.sampling` uses for decoding. Rounds are interleaved; the minimum over
rounds is reported (the host's speed drifts; the minimum is the least disturbed run).

    python experiments/bench_decode_step.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


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
    from metapl.models import load_pretrained, transformer
    from metapl.models.sampling import _CPU_DECODE_OPTIONS

    model = load_pretrained("smollm2-135m")
    config = model.config
    params = jax.block_until_ready(jax.jit(transformer.unstack_layers)(model.params))
    b, n = args.batch, args.steps
    cache = transformer.init_cache(config, b, args.cache_slots)
    token = jnp.ones((b, 1), jnp.int32)

    def full(p, c, t):
        def body(_, carry):
            c, t = carry
            h, c = transformer.hidden_states(p, config, t, cache=c)
            logits = transformer.logits_from_hidden(p, config, h[:, 0])
            return c, jnp.argmax(logits, -1)[:, None].astype(jnp.int32)
        return jax.lax.fori_loop(0, n, body, (c, t))

    def no_head(p, c, t):
        def body(_, carry):
            c, t, acc = carry
            h, c = transformer.hidden_states(p, config, t, cache=c)
            return c, t, acc + h[:, 0, :8].sum()
        return jax.lax.fori_loop(0, n, body, (c, t, 0.0))

    def head_only(p, c, t):
        def body(_, x):
            return x + 1e-6 * transformer.logits_from_hidden(p, config, x)[:, : config.hidden_size]
        return jax.lax.fori_loop(0, n, body, jnp.ones((b, config.hidden_size)))

    def mlp_matmuls(p, c, t):
        def body(_, x):
            for layer in p["layers"]:
                m = layer["mlp"]
                x = x + (jax.nn.silu(x @ m["gate"]["kernel"]) * (x @ m["up"]["kernel"])) @ m["down"]["kernel"]
            return x
        return jax.lax.fori_loop(0, n, body, 0.01 * jnp.ones((b, config.hidden_size)))

    def attention_projections(p, c, t):
        g = config.num_heads // config.num_kv_heads

        def body(_, x):
            for layer in p["layers"]:
                a = layer["attn"]
                q, k, v = x @ a["q"]["kernel"], x @ a["k"]["kernel"], x @ a["v"]["kernel"]
                x = x + (q + jnp.tile(k + v, g)) @ a["o"]["kernel"]
            return x
        return jax.lax.fori_loop(0, n, body, 0.01 * jnp.ones((b, config.hidden_size)))

    variants = {"full step": full, "without LM head": no_head, "LM head only": head_only,
                "MLP matmuls only": mlp_matmuls, "attention projections only": attention_projections}
    compiled = {}
    for name, fn in variants.items():
        for lib, options in (("default (YNNPACK)", None), ("XNNPACK dots", _CPU_DECODE_OPTIONS)):
            f = jax.jit(fn, compiler_options=options)
            jax.block_until_ready(f(params, cache, token))
            compiled[(name, lib)] = f
    best = {key: float("inf") for key in compiled}
    for _ in range(args.rounds):
        for key, f in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(params, cache, token))
            best[key] = min(best[key], (time.perf_counter() - t0) / n * 1000)

    info = machine_info()
    info["matmul_peak_gflops_f32"] = matmul_peak_gflops()
    results = [{"part": name, "dot_library": lib, "ms_per_step": ms} for (name, lib), ms in best.items()]
    lines = ["# One decoding step of SmolLM2-135M on CPU, by part", "",
             f"Batch {b}, {args.cache_slots} cache slots, float32; minimum over {args.rounds} interleaved rounds of "
             f"{n} steps. Machine: {info['cpu']}, {info['cores']} cores, jax {info['jax']}, f32 matmul peak "
             f"{info['matmul_peak_gflops_f32']:.0f} GFLOP/s.", "",
             "| part | default (YNNPACK) ms/step | XNNPACK dots ms/step |", "|---|---|---|"]
    for name in variants:
        lines.append(f"| {name} | {best[(name, 'default (YNNPACK)')]:.1f} | {best[(name, 'XNNPACK dots')]:.1f} |")
    lines += ["", "Command: `python experiments/bench_decode_step.py " + " ".join(sys.argv[1:]) + "`", ""]
    payload = {"benchmark": "decode_step", "batch": b, "cache_slots": args.cache_slots, "steps": n,
               "rounds": args.rounds, "machine": info, "results": results}
    write_results("bench_decode_step", payload, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
