"""`metapl data build NAME` and `metapl data show NAME`: build the embedded benchmarks, look inside them.

Builds go to --data-dir (default $METAPL_DATA_DIR, else ~/.cache/metapl/datasets).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from metapl.data.schemas import DataError, PreferencePair

BENCHMARKS = ("synthetic_domains",)


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
    g = b.add_argument_group("synthetic_domains knobs")
    g.add_argument("--num-domains", type=int, default=64)
    g.add_argument("--num-heldout", type=int, default=24)
    g.add_argument("--shift", type=float, default=0.5, help="spread of domain preferences around the shared one")
    g.add_argument("--label-noise", type=float, default=0.1, help="Bradley-Terry temperature of the labels")
    g.add_argument("--pairs-per-domain", type=int, default=64)
    g.add_argument("--prompts-per-domain", type=int, default=64)
    g.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_build)

    s = dsub.add_parser("show", help="print examples and per-domain counts")
    s.add_argument("name", choices=BENCHMARKS)
    s.add_argument("--data-dir", type=Path, default=None)
    s.add_argument("--config", choices=("pairs", "prompts"), default="pairs")
    s.add_argument("--split", choices=("train", "heldout"), default="train")
    s.add_argument("--domain", help="only this domain")
    s.add_argument("-n", type=int, default=5, help="examples to print (default 5)")
    s.set_defaults(func=_cmd_show)


def _cmd_build(args: argparse.Namespace) -> int:
    from metapl.data.synthetic import SyntheticConfig
    from metapl.data.tfds_builders import build_synthetic, load_records

    data_dir = args.data_dir or default_data_dir()
    try:
        config = SyntheticConfig(num_domains=args.num_domains, num_heldout=args.num_heldout, shift=args.shift,
                                 label_noise=args.label_noise, pairs_per_domain=args.pairs_per_domain, seed=args.seed)
    except ValueError as e:
        raise DataError(str(e)) from None
    paths = build_synthetic(data_dir, config, prompts_per_domain=args.prompts_per_domain, overwrite=args.overwrite)
    for kind, path in paths.items():
        counts = {split: len(load_records(path, split)) for split in ("train", "heldout")}
        print(f"{args.name}/{kind}: {counts['train']} train ({config.num_domains - config.num_heldout} domains), "
              f"{counts['heldout']} heldout ({config.num_heldout} domains) -> {path}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from metapl.data.tfds_builders import VERSION, load_records, read_metadata, synthetic_from_metadata

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
    bench = synthetic_from_metadata(metadata) if args.name == "synthetic_domains" else None
    for r in shown:
        print("---")
        print(f"domain: {r.domain}\nprompt: {r.prompt}")
        if isinstance(r, PreferencePair):
            gold = (lambda y: f"  (gold reward {bench.gold_reward(r.domain, r.prompt, y):+.3f})") if bench else str
            print(f"chosen: {r.chosen}{gold(r.chosen) if bench else ''}")
            print(f"rejected: {r.rejected}{gold(r.rejected) if bench else ''}")
        elif r.reference:
            print(f"reference: {r.reference}")
    sys.stdout.flush()
    return 0
