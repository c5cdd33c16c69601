"""`metapl data build|show|import`: build the embedded benchmarks, look inside them, import your own files.

Builds go to --data-dir (default $METAPL_DATA_DIR, else ~/.cache/metapl/datasets).

    metapl data import prefs.parquet --kind pairs --map prompt=question --map domain=category --out prefs.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from metapl.config import check_settings
from metapl.data.schemas import DataError, PreferencePair

BENCHMARKS = ("synthetic_domains", "sentiment_domains", "sentiment_targets")


def default_data_dir() -> Path:
    return Path(os.environ.get("METAPL_DATA_DIR") or Path.home() / ".cache" / "metapl" / "datasets")


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="build and inspect data sets",
                          description="Build the embedded benchmarks (TFDS, array_record) and inspect them.")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    b = dsub.add_parser("build", help="build a benchmark")
    b.add_argument("name", choices=BENCHMARKS)
    b.add_argument("--data-dir", type=Path, default=None,
                   help="where to write (default: $METAPL_DATA_DIR, else ~/.cache/metapl/datasets)")
    b.add_argument("--overwrite", action="store_true", help="replace a build made with other settings")
    g = b.add_argument_group("knobs of both benchmarks")
    g.add_argument("--pairs-per-domain", type=int, default=None, help="default: 64 synthetic, 8 sentiment")
    g.add_argument("--prompts-per-domain", type=int, default=None, help="default: 64 synthetic, 32 sentiment")
    g.add_argument("--label-noise", type=float, default=None,
                   help="Bradley-Terry temperature of the labels (default: 0.1 synthetic, 0.05 sentiment)")
    g.add_argument("--seed", type=int, default=0)
    g = b.add_argument_group("synthetic_domains knobs")
    g.add_argument("--num-domains", type=int, default=64)
    g.add_argument("--num-heldout", type=int, default=24)
    g.add_argument("--shift", type=float, default=0.5, help="spread of domain preferences around the shared one")
    g = b.add_argument_group("sentiment_domains and sentiment_targets knobs")
    g.add_argument("--max-new-tokens", type=int, default=24, help="length of the sampled continuations")
    g.add_argument("--model", default="smollm2-135m", help="the policy that samples the continuations")
    g.add_argument("--heldout-pairs-per-domain", type=int, default=None,
                   help="labelled pairs per held-out domain (default: --pairs-per-domain)")
    g.add_argument("--min-margin", type=float, default=0.0,
                   help="drop (and count) pairs whose gold margin is below this (the judge sees no preference)")
    g.add_argument("--positive-fraction", type=float, default=0.5,
                   help="sentiment_targets: share of each split's domains whose target is positive")
    g.add_argument("--pairs-per-prompt", type=int, default=1,
                   help="pairs sampled from each pair-seeding prompt (2 x this many continuations)")
    b.set_defaults(func=_cmd_build)

    s = dsub.add_parser("show", help="print examples and per-domain counts")
    s.add_argument("name", choices=BENCHMARKS)
    s.add_argument("--data-dir", type=Path, default=None)
    s.add_argument("--config", choices=("pairs", "prompts"), default="pairs")
    s.add_argument("--split", choices=("train", "heldout"), default="train")
    s.add_argument("--domain", help="only this domain")
    s.add_argument("-n", type=int, default=5, help="examples to print (default 5)")
    s.set_defaults(func=_cmd_show)

    i = dsub.add_parser("import", help="validate a JSONL/Parquet file of your own and write metapl records",
                        description="Read records through a column mapping, validate every one, and write them "
                        "as metapl JSONL. The first invalid record stops the import (exit status 2) unless "
                        "--skip-invalid, which writes the skipped lines and reasons beside the output. Optional "
                        "fields (gold_margin, reference) not mapped are read from columns of their own name when "
                        "present; columns that feed no field are named with their row counts; an empty input, or "
                        "one without a single valid record, is an error.")
    i.add_argument("path", type=Path, help="a .jsonl[.gz] or .parquet file, or a directory of them")
    i.add_argument("--kind", choices=("pairs", "prompts", "samples"), default="pairs")
    i.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                   help="read record field FIELD from the file's COLUMN (default: the field's own name)")
    i.add_argument("--domain", help="a constant domain, for files without a domain column")
    i.add_argument("--out", type=Path, help="where to write the records (default: only validate)")
    i.add_argument("--skip-invalid", action="store_true", help="skip invalid records, count and store the reasons")
    i.set_defaults(func=_cmd_import)


def _knobs(args: argparse.Namespace, **defaults) -> dict:
    return {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in defaults.items()}


def _cmd_build(args: argparse.Namespace) -> int:
    from metapl.data import tfds_builders

    data_dir = args.data_dir or default_data_dir()
    try:
        if args.name == "synthetic_domains":
            from metapl.data.synthetic import SyntheticConfig

            knobs = _knobs(args, pairs_per_domain=64, prompts_per_domain=64, label_noise=0.1)
            prompts_per_domain = knobs.pop("prompts_per_domain")
            config = SyntheticConfig(num_domains=args.num_domains, num_heldout=args.num_heldout, shift=args.shift,
                                     seed=args.seed, **knobs)
            check_settings(config)
            paths = tfds_builders.build_synthetic(data_dir, config, prompts_per_domain=prompts_per_domain,
                                                  overwrite=args.overwrite)
        else:
            from metapl.data.sentiment import SentimentConfig

            config = SentimentConfig(max_new_tokens=args.max_new_tokens, model=args.model, seed=args.seed,
                                     targets=args.name == "sentiment_targets",
                                     heldout_pairs_per_domain=args.heldout_pairs_per_domain,
                                     min_margin=args.min_margin, positive_fraction=args.positive_fraction,
                                     pairs_per_prompt=args.pairs_per_prompt,
                                     **_knobs(args, pairs_per_domain=8, prompts_per_domain=32, label_noise=0.05))
            check_settings(config)
            paths = tfds_builders.build_sentiment(data_dir, config, overwrite=args.overwrite)
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(str(e)) from None
    for kind, path in paths.items():
        meta = tfds_builders.read_metadata(path)
        counts = {split: len(tfds_builders.load_records(path, split)) for split in ("train", "heldout")}
        print(f"{args.name}/{kind}: {counts['train']} train ({len(meta['train_domains'])} domains), "
              f"{counts['heldout']} heldout ({len(meta['heldout_domains'])} domains) -> {path}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from metapl.data.tfds_builders import VERSION, load_records, read_metadata

    path = (args.data_dir or default_data_dir()) / args.name / args.config / VERSION
    if not path.exists():
        raise DataError(f"{path} does not exist; run `metapl data build {args.name}` first"
                        + (f" (with --data-dir {args.data_dir})" if args.data_dir else ""))
    metadata = read_metadata(path)
    records = load_records(path, args.split)
    known = metadata.get(f"{args.split}_domains") or sorted({r.domain for r in records})
    if args.domain is not None and args.domain not in known:
        raise DataError(f"unknown domain {args.domain!r} in the {args.split} split; its domains are "
                        f"{', '.join(known[:10])}{' ...' if len(known) > 10 else ''}")
    counts = Counter(r.domain for r in records)
    print(f"{args.name}/{args.config} [{args.split}]: {len(records)} records in {len(counts)} domains ({path})")
    line = ", ".join(f"{d}: {counts[d]}" for d in known)
    print(f"per domain: {line}")
    shown = [r for r in records if args.domain is None or r.domain == args.domain][: args.n]
    gold = _gold_reward(args.name, metadata)
    for r in shown:
        print("---")
        print(f"domain: {r.domain}\nprompt: {r.prompt}")
        if isinstance(r, PreferencePair):
            print(f"chosen: {r.chosen}  ({gold(r.domain, r.prompt, r.chosen)})")
            print(f"rejected: {r.rejected}  ({gold(r.domain, r.prompt, r.rejected)})")
        else:
            if args.name.startswith("sentiment"):
                print(f"  ({gold(r.domain, '', r.prompt)} for the prompt)")
            if r.reference:
                print(f"reference: {r.reference if len(r.reference) < 300 else r.reference[:300] + ' ...'}")
    sys.stdout.flush()
    return 0


def _gold_reward(name: str, metadata: dict):
    """(domain, prompt, response) -> a printable gold score of the response."""
    if name == "synthetic_domains":
        from metapl.data.tfds_builders import synthetic_from_metadata

        bench = synthetic_from_metadata(metadata)
        return lambda d, x, y: f"gold reward {bench.gold_reward(d, x, y):+.3f}"
    from metapl.data.judges import VaderJudge

    judge = VaderJudge()
    if name == "sentiment_targets":
        from metapl.data.sentiment import target_gold

        targets = metadata["domain_targets"]
        return lambda d, x, y: (f"gold {float(target_gold(judge, targets[d], [x], [y])[0]):+.3f} "
                                f"(target {targets[d]:+d})")
    return lambda d, x, y: f"VADER {float(judge.score([x + y])[0]):+.3f}"


def _cmd_import(args: argparse.Namespace) -> int:
    import json

    from metapl.data.readers import import_table
    from metapl.data.records import write_jsonl
    from metapl.data.schemas import PromptExample, ScoredSample

    record_type = {"pairs": PreferencePair, "prompts": PromptExample, "samples": ScoredSample}[args.kind]
    columns = {}
    for item in args.map:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise DataError(f"--map expects FIELD=COLUMN, got {item!r}")
        columns[field] = column
    optional = {"gold_margin", "reference"}  # read from same-named columns where present (import_table)
    for field in record_type.FIELDS:
        if field not in columns and field not in optional and not (field == "domain" and args.domain):
            columns[field] = field
    try:
        result = import_table(args.path, columns, record_type=record_type, domain=args.domain,
                              skip_invalid=args.skip_invalid)
    except ValueError as e:
        if isinstance(e, DataError):
            raise
        raise DataError(str(e)) from None
    print(result.summary())
    if result.ignored:
        print(f"note: column(s) {', '.join(result.ignored)} were not read; map one with --map FIELD=COLUMN",
              file=sys.stderr)
    if not result.records:  # every row invalid (--skip-invalid) or filtered out: nothing worth writing
        first = f"; first: {result.skipped[0][1]}" if result.skipped else ""
        raise DataError(f"no valid records ({len(result.skipped)} skipped{first})", source=str(args.path))
    if args.out:
        n = write_jsonl(args.out, result.records)
        print(f"wrote {n} records to {args.out}")
        if result.skipped:
            report = args.out.with_name(args.out.name + ".skipped.json")
            report.write_text(json.dumps({"skipped": len(result.skipped), "reasons": [
                {"line": line, "reason": reason} for line, reason in result.skipped]}, indent=1))
            print(f"wrote the {len(result.skipped)} skipped records' lines and reasons to {report}")
    for line, reason in result.skipped[:5]:
        print(f"skipped: {reason}", file=sys.stderr)
    return 0
