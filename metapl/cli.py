"""The `metapl` command.

    metapl sample --model smollm2-135m --prompt "The capital of France is" --max-new-tokens 8
    metapl data build synthetic_domains
    metapl data show synthetic_domains --split heldout -n 3
    metapl train dpo --config experiments/configs/dpo_synthetic.yaml --run-dir runs/dpo
    metapl protocol --config experiments/configs/protocol_quickstart.yaml --out runs/quickstart
    metapl eval --run runs/dpo
    metapl export --run runs/dpo --out exported/dpo
    metapl report runs/quickstart

Errors in what the user asked for (unknown model, missing files, bad values) end with exit status 2 and a
one-line reason on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from metapl.config import check_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# transformers is used for tokenizers only; keep its notices (e.g. "PyTorch was not found") off the terminal.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


class UsageError(Exception):
    """Bad input from the command line; reported in one line with exit status 2."""


def _log(msg: str) -> None:
    print(f"[metapl] {msg}", file=sys.stderr, flush=True)


def checked(cfg):
    """`cfg` (a config dataclass built from flags) once its numbers are finite and in range (else ConfigError)."""
    check_settings(cfg)
    return cfg


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _cmd_sample(args: argparse.Namespace) -> int:
    prompts = list(args.prompt or [])
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                prompts += [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            raise UsageError(f"--prompts-file {args.prompts_file}: {e.strerror}") from None
    if not prompts:
        raise UsageError("give at least one --prompt (or --prompts-file)")
    if any(not p.strip() for p in prompts):
        raise UsageError("a prompt is empty")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {args.top_k}")

    from metapl.models.pretrained import load_pretrained
    from metapl.parallel import initialize, run_mesh
    from metapl.runtime import enable_compile_cache

    enable_compile_cache()
    mesh_cfg = _mesh_config(args)
    initialize(mesh_cfg)  # multi-process runs join here, before JAX touches a device
    mesh = run_mesh(mesh_cfg)
    import jax

    from metapl.models.sampling import SamplingConfig, default_stop_ids, generate_text

    t0 = time.perf_counter()
    model = load_pretrained(args.model, dtype=args.dtype)
    _log(f"loaded {args.model} ({model.config.num_params() / 1e6:.0f}M params) from {model.source} "
         f"in {time.perf_counter() - t0:.1f}s")
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop_token_ids=() if args.no_stop else default_stop_ids(model.tokenizer),
    )
    checked(sampling)
    t0 = time.perf_counter()
    texts = generate_text(model.params, model.config, model.tokenizer, prompts, jax.random.key(args.seed), sampling,
                          chat=args.chat, mesh=mesh)
    on = f" on a {mesh_cfg} mesh" if mesh is not None else ""
    _log(f"sampled {len(prompts)} x {args.max_new_tokens} tokens{on} in {time.perf_counter() - t0:.1f}s "
         "(including compilation on first use)")
    for prompt, text in zip(prompts, texts):
        print(text if (args.chat or args.completion_only) else prompt + text, flush=True)
        if len(prompts) > 1:
            print("---")
    return 0


def _mesh_config(args: argparse.Namespace):
    """The MeshConfig of the --mesh-* flags."""
    from metapl.parallel import MeshConfig

    return checked(MeshConfig(data=args.mesh_data, fsdp=args.mesh_fsdp, tensor=args.mesh_tensor))


def _add_test_flags(parser: argparse.ArgumentParser, run_help: str) -> None:
    """The flags `meta-test` and `eval` share: which run, which domains, how many prompts and samples, the seed."""
    parser.add_argument("--run", required=True, help=run_help)
    parser.add_argument("--domains", default="heldout", choices=("heldout", "validation", "train"))
    parser.add_argument("--prompts", type=_positive_int, default=16,
                        help="optimisation prompts per domain (reward models)")
    parser.add_argument("--eval-prompts", type=_positive_int, default=32, help="gold-judged prompts per domain")
    parser.add_argument("--samples", type=_positive_int, default=4, help="reference samples per optimisation prompt")
    parser.add_argument("--seed", type=int, default=0)


def _add_mesh_flags(parser: argparse.ArgumentParser, split: str) -> None:
    for axis in ("data", "fsdp", "tensor"):
        parser.add_argument(f"--mesh-{axis}", type=_positive_int, default=1,
                            help=f"devices on the mesh's {axis} axis ({split}; default 1)")


def _cmd_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from metapl.runs import algorithm_names, prepare_run_dir, train
    from metapl.runtime import enable_compile_cache

    if args.algo not in algorithm_names():
        raise UsageError(f"unknown algorithm {args.algo!r}; available: {', '.join(algorithm_names())}")
    for item in args.overrides:
        if "=" not in item:
            raise UsageError(f"expected key=value, got {item!r}")
    enable_compile_cache()
    run_dir = Path(args.run_dir)
    cfg = prepare_run_dir(run_dir, args.config, [f"algo={args.algo}", *args.overrides], args.resume)
    from metapl.parallel import initialize

    initialize(cfg.mesh)  # multi-process runs join here, before JAX touches a device
    final = train(run_dir, cfg, resume=args.resume, progress=not args.no_progress)
    print(json.dumps({"run_dir": str(run_dir), "step": cfg.steps, "eval": final}))
    return 0


def _cmd_meta_test(args: argparse.Namespace) -> int:
    from metapl.runs import MetaTestConfig, meta_test
    from metapl.parallel import initialize
    from metapl.runtime import enable_compile_cache

    enable_compile_cache()
    test = MetaTestConfig(prompts=args.prompts, eval_prompts=args.eval_prompts, samples_per_prompt=args.samples,
                          steps=args.steps, lr=args.lr, beta=args.beta, prox=args.prox, seed=args.seed,
                          domains_per_batch=args.domains_per_batch, reward=args.reward,
                          mesh=_mesh_config(args))
    checked(test)
    initialize(test.mesh)  # multi-process runs join here, before JAX touches a device
    result = meta_test(args.run, args.domains, test, progress=not args.no_progress)
    keys = ("gold_reference", "gold_adapted", "gold_gain", "win_rate", "rm_pair_accuracy")
    print(json.dumps({"run_dir": args.run, "split": args.domains, "domains": result["domains"], "reward": args.reward,
                      **{k: result[k] for k in keys}}))
    return 0


def _cmd_protocol(args: argparse.Namespace) -> int:
    from pathlib import Path

    from metapl.protocol import load_protocol, run_protocol
    from metapl.runtime import enable_compile_cache

    for item in args.overrides:
        if "=" not in item:
            raise UsageError(f"expected key=value, got {item!r}")
    cfg = load_protocol(args.config, args.overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    enable_compile_cache()
    command = " ".join(["metapl protocol", *(["--config", args.config] if args.config else []), "--out", args.out,
                        *args.overrides])
    run_protocol(cfg, out, progress=not args.no_progress, command=command)
    print((out / "report.md").read_text())
    plots = ", ".join(str(p) for p in sorted((out / "plots").glob("*.png")))
    print(f"Plots: {plots}; every number: {out / 'report.json'}, {out / 'per_domain.csv'}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from metapl.protocol import evaluate_run
    from metapl.runs import MetaTestConfig
    from metapl.runtime import enable_compile_cache

    enable_compile_cache()
    test = checked(MetaTestConfig(prompts=args.prompts, eval_prompts=args.eval_prompts,
                                  samples_per_prompt=args.samples, seed=args.seed))
    result = evaluate_run(args.run, args.domains, test, progress=not args.no_progress)
    keys = ("gold_reference", "gold_adapted", "gold_gain", "win_rate", "kl")
    print(json.dumps({"run_dir": args.run, "split": args.domains, "domains": result["domains"],
                      **{k: result[k] for k in keys if k in result}}))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from metapl.protocol import export_policy

    out = export_policy(args.run, args.out, dtype=args.dtype)
    _log(f"exported the policy of {args.run} to {out} (load it with transformers.AutoModelForCausalLM)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from metapl.protocol import report_directory

    path = report_directory(args.directory)
    print(path.read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metapl", description="Preference learning with language models (JAX/Flax).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample", help="generate text from a model",
                       description="Generate a continuation of each prompt with a KV-cached, compiled sampler.")
    p.add_argument("--model", default="smollm2-135m",
                   help="short name (smollm2-135m), a Hugging Face model directory, or a .gguf file")
    p.add_argument("--prompt", action="append", help="a prompt; repeat for a batch")
    p.add_argument("--prompts-file", help="a text file with one prompt per line")
    p.add_argument("--max-new-tokens", type=_positive_int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    p.add_argument("--no-stop", action="store_true", help="do not stop at end-of-sequence tokens")
    p.add_argument("--completion-only", action="store_true", help="print only the generated text")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="parameter/compute dtype")
    _add_mesh_flags(p, "weights by the sharding rules, prompts split over data x fsdp")
    p.set_defaults(func=_cmd_sample)

    from metapl.data.commands import add_parser as add_data_parser

    add_data_parser(sub)

    t = sub.add_parser("train", help="train with one algorithm",
                       description="Train with ALGO. A run directory receives config.yaml, metrics.jsonl, "
                       "TensorBoard events and checkpoints; --resume continues it.")
    t.add_argument("algo", help="rm, dpo, ipo, tree-rm, mle-filter, rwr, dt, srpo, rloo, ppo or meta")
    t.add_argument("--config", help="a YAML file of RunConfig fields (see experiments/configs/)")
    t.add_argument("--run-dir", required=True, help="where the run writes (must not hold a run unless --resume)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir (may raise `steps`)")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.learning_rate=1e-4")
    t.set_defaults(func=_cmd_train)

    m = sub.add_parser("meta-test", help="policy optimisation guided by a trained reward model on unseen domains",
                       description="Freeze the reward model of a `train meta` or `train rm` run, optimise the "
                       "reference policy against it on each test domain (projected solver) and score both policies "
                       "with the gold judge. Writes meta_test_<domains>.json and .md into the run directory.")
    _add_test_flags(m, "a run directory of `metapl train meta` or `metapl train rm`")
    m.add_argument("--steps", type=_positive_int, default=None, help="solver steps (default: the run's inner steps)")
    m.add_argument("--lr", type=float, default=None, help="solver learning rate (default: the run's)")
    m.add_argument("--beta", type=float, default=None, help="KL weight β (default: the run's)")
    m.add_argument("--prox", type=float, default=None, help="proximal weight (default: the run's)")
    m.add_argument("--domains-per-batch", type=_positive_int, default=8,
                   help="domains adapted and decoded together (vmapped; memory grows with it)")
    m.add_argument("--reward", default="model", choices=("model", "gold"),
                   help="what guides the solver: the run's reward model, or the benchmark's gold reward (oracle)")
    _add_mesh_flags(m, "domains split over data x fsdp")
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=_cmd_meta_test)

    r = sub.add_parser("protocol", help="every method on the same meta-train domains, tested on held-out ones",
                       description="Train each method of the protocol for each seed on the meta-train domains, test "
                       "every one on the held-out domains with the same prompts and keys, and write the report "
                       "(report.md, report.json, per_domain.csv, plots/). Re-running reuses finished sub-runs.")
    r.add_argument("--config", help="a protocol YAML file (see experiments/configs/protocol_quickstart.yaml)")
    r.add_argument("--out", required=True, help="the protocol's directory (sub-runs, results, report)")
    r.add_argument("--no-progress", action="store_true")
    r.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. methods.bt.steps=50")
    r.set_defaults(func=_cmd_protocol)

    e = sub.add_parser("eval", help="re-evaluate a run on held-out domains",
                       description="Test the latest checkpoint of any run on the benchmark's domains: meta-test for a "
                       "reward model (rm, tree-rm, meta; the run's own solver), policy test for a policy. Writes "
                       "meta_test_<domains>.* or policy_test_<domains>.* into the run directory.")
    _add_test_flags(e, "a run directory")
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("export", help="write a run's policy as a Hugging Face directory (LoRA merged)",
                       description="Write the trained policy of a run (adapters merged into the weights) as "
                       "config.json + model.safetensors (+ tokenizer files) that transformers loads.")
    x.add_argument("--run", required=True, help="a run directory of a policy-training algorithm")
    x.add_argument("--out", required=True, help="a new (or empty) directory")
    x.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    x.set_defaults(func=_cmd_export)

    q = sub.add_parser("report", help="render the tables and plots of a protocol or run directory")
    q.add_argument("directory", help="a `metapl protocol` output directory or a run directory")
    q.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `metapl train` takes key=value overrides anywhere after the algorithm (argparse alone cannot collect
    # positionals placed after options), so unknown words are handed to it and refused for other commands.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("train", "protocol") or any(x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    from metapl.config import ConfigError
    from metapl.data.schemas import DataError
    from metapl.models.hf_format import CheckpointError
    from metapl.models.tokenizer import TokenizerError
    from metapl.train.run import RunError

    try:
        return args.func(args)
    except (UsageError, CheckpointError, TokenizerError, DataError, ConfigError, RunError) as e:
        command = " ".join(c for c in (args.command, getattr(args, "data_command", None)) if c)
        print(f"metapl {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metapl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
