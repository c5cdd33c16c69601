"""TFDS builders for the embedded benchmarks, stored as array_record and read back without TensorFlow.

Each benchmark has two configs: `pairs` (prompt, chosen, rejected, domain, gold_margin: float32, as TFDS's
example format stores floats; NaN = unknown) and
`prompts` (prompt, domain, reference). Both have the splits `train` (meta-train domains) and `heldout`
(held-out domains, never used for training). The build's knobs and domain lists are stored in the dataset's
metadata, so a reader knows exactly what it holds:

    build_synthetic(data_dir, SyntheticConfig())            # -> {"pairs": path, "prompts": path}
    records = load_records(path, "train")                   # PreferencePair or PromptExample objects
    tfds.builder_from_directory(path).as_data_source("train")  # random access, no TensorFlow needed
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from metapl.data.schemas import DataError, PreferencePair, PromptExample
from metapl.data.synthetic import SyntheticConfig, SyntheticDomains

VERSION = "1.0.0"


def _tfds():
    import tensorflow_datasets as tfds  # imported lazily: it is slow to import

    tfds.display_progress_bar(False)  # builds here take seconds; the CLI prints its own summary
    return tfds


def _features(kind: str):
    tfds = _tfds()
    text = tfds.features.Text
    if kind == "pairs":
        return tfds.features.FeaturesDict({"prompt": text(), "chosen": text(), "rejected": text(),
                                           "domain": text(), "gold_margin": np.float32})
    return tfds.features.FeaturesDict({"prompt": text(), "domain": text(), "reference": text()})


def _example(record) -> dict:
    if isinstance(record, PreferencePair):
        margin = math.nan if record.gold_margin is None else record.gold_margin
        return {"prompt": record.prompt, "chosen": record.chosen, "rejected": record.rejected,
                "domain": record.domain, "gold_margin": np.float32(margin)}
    return {"prompt": record.prompt, "domain": record.domain, "reference": record.reference or ""}


def _record(example: dict, kind: str):
    s = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in example.items()}
    if kind == "pairs":
        margin = float(s["gold_margin"])
        return PreferencePair(s["prompt"], s["chosen"], s["rejected"], s["domain"],
                              None if math.isnan(margin) else margin)
    return PromptExample(s["prompt"], s["domain"], s["reference"] or None)


def make_builder_class(name: str, description: str):
    """A GeneratorBasedBuilder class for benchmark `name` whose records come from a `splits` callable."""
    tfds = _tfds()

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(VERSION)
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="pairs", description="preference pairs"),
                           tfds.core.BuilderConfig(name="prompts", description="prompts per domain")]

        def __init__(self, *, splits: Callable[[str], dict[str, Iterable]] | None = None,
                     metadata: dict | None = None, report: Callable[[], dict] | None = None, **kwargs):
            self._splits, self._metadata, self._report = splits, metadata or {}, report
            super().__init__(**kwargs)

        def _info(self):
            return self.dataset_info_from_configs(
                description=description, features=_features(self.builder_config.name),
                metadata=tfds.core.MetadataDict(self._metadata))

        def _split_generators(self, dl_manager):
            if self._splits is None:
                raise DataError(f"{name}: nothing to build from (construct the builder with splits=...)")
            splits = self._splits(self.builder_config.name)
            if self._report is not None:  # what the build found out (counts), stored beside its settings
                self.info.metadata.update(json.loads(json.dumps(self._report())))
            return {split: self._generate_examples(records) for split, records in splits.items()}

        def _generate_examples(self, records):
            for i, r in enumerate(records):
                yield i, _example(r)

    Builder.name = name
    Builder.__name__ = Builder.__qualname__ = "".join(p.title() for p in name.split("_"))
    return Builder


def build(name: str, description: str, data_dir: str | Path, splits: Callable[[str], dict[str, Iterable]],
          metadata: dict, *, overwrite: bool = False, report: Callable[[], dict] | None = None) -> dict[str, Path]:
    """Build both configs of benchmark `name` under data_dir; returns {config: dataset directory}.

    metadata: the build's settings, stored with it. An existing build with the same settings is reused; one
    with other settings is an error unless `overwrite`. report(): extra facts known only after `splits` ran
    (e.g. counts of discarded samples), stored in the metadata too; its keys must not repeat a setting's (the
    reuse check compares the stored settings).
    """
    cls = make_builder_class(name, description)
    if report is not None:
        report = _checked_report(report, metadata)
    paths = {}
    for config in ("pairs", "prompts"):
        path = Path(data_dir) / name / config / VERSION
        if path.exists():
            old = {k: v for k, v in read_metadata(path).items() if k in metadata}
            if old == json.loads(json.dumps(metadata)) and not overwrite:
                paths[config] = path
                continue
            if not overwrite:
                raise DataError(f"{path} holds a build with other settings ({_diff(old, metadata)}); pass "
                                "overwrite=True (--overwrite) or another data directory")
            shutil.rmtree(path)
        builder = cls(config=config, splits=splits, metadata=metadata, report=report, data_dir=str(data_dir),
                      file_format="array_record")
        builder.download_and_prepare()
        paths[config] = Path(builder.data_path)
    return paths


def _checked_report(report: Callable[[], dict], metadata: dict) -> Callable[[], dict]:
    def checked():
        facts = report()
        clash = sorted(set(facts) & set(metadata))
        if clash:
            raise ValueError(f"the build report repeats the settings {clash}: a stored fact would replace a setting")
        return facts
    return checked


def _diff(old: dict, new: dict) -> str:
    new = json.loads(json.dumps(new))
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in ("train_domains",
                                                                                          "heldout_domains"))
    return ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys) or "domain lists differ"


def read_metadata(path: str | Path) -> dict:
    """The metadata a build stored (knobs, domain lists)."""
    return dict(_tfds().builder_from_directory(str(path)).info.metadata or {})


def load_records(path: str | Path, split: str) -> list:
    """All records of one split of a built config directory, as PreferencePair or PromptExample."""
    tfds = _tfds()
    builder = tfds.builder_from_directory(str(path))
    if split not in builder.info.splits:
        raise DataError(f"{path} has no split {split!r}; it has {', '.join(builder.info.splits)}")
    source = builder.as_data_source(split)
    kind = builder.builder_config.name if builder.builder_config else Path(path).parent.name
    records = [_record(source[i], kind) for i in range(len(source))]
    return records


def build_fingerprint(data_dir: str | Path, name: str) -> str:
    """sha256 (hex) of every record of every split of both configs of benchmark `name` under data_dir, in order: two
    builds hash alike exactly when they hold the same records (results measured on a build can name it)."""
    import hashlib

    digest = hashlib.sha256()
    for config in ("pairs", "prompts"):
        path = Path(data_dir) / name / config / VERSION
        if not path.exists():
            raise DataError(f"{path}: no {name} build here (metapl data build {name} --data-dir {data_dir})")
        for split in sorted(_tfds().builder_from_directory(str(path)).info.splits):
            digest.update(f"{config}/{split}\n".encode())
            for record in load_records(path, split):
                digest.update(json.dumps(dataclasses.asdict(record), sort_keys=True).encode() + b"\n")
    return digest.hexdigest()


def build_synthetic(data_dir: str | Path, config: SyntheticConfig = SyntheticConfig(), *,
                    prompts_per_domain: int = 64, overwrite: bool = False) -> dict[str, Path]:
    """Build `synthetic_domains` (both configs) for these knobs."""
    bench = SyntheticDomains(config)

    def splits(kind: str):
        make = bench.pairs if kind == "pairs" else (lambda d: bench.prompts(d, prompts_per_domain))
        return {"train": [r for d in bench.train_domains for r in make(d)],
                "heldout": [r for d in bench.heldout_domains for r in make(d)]}

    metadata = dict(dataclasses.asdict(config), prompts_per_domain=prompts_per_domain,
                    train_domains=bench.train_domains, heldout_domains=bench.heldout_domains)
    return build("synthetic_domains", "Token-level preference benchmark with an analytic gold reward "
                 "(metapl.data.synthetic).", data_dir, splits, metadata, overwrite=overwrite)


def synthetic_from_metadata(metadata: dict) -> SyntheticDomains:
    """The benchmark (with its gold reward) that a synthetic_domains build was made from."""
    fields = {f.name for f in dataclasses.fields(SyntheticConfig)}
    knobs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in metadata.items() if k in fields}
    return SyntheticDomains(SyntheticConfig(**knobs))


def build_sentiment(data_dir: str | Path, config=None, *, overwrite: bool = False) -> dict[str, Path]:
    """Build `sentiment_domains`, or `sentiment_targets` when config.targets (samples the embedded policy:
    minutes on CPU; reused once built)."""
    import functools

    from metapl.data import sentiment

    config = config or sentiment.SentimentConfig()
    made = functools.cache(lambda: sentiment.build_records(config))

    def splits(kind: str):
        return made().pairs if kind == "pairs" else made().prompts

    def report():
        b = made()
        return {"identical_pairs_discarded": b.identical, "indecisive_pairs_discarded": b.indecisive,
                "excluded_domains": b.excluded, "train_domains": b.train_domains,
                "heldout_domains": b.heldout_domains, "domain_targets": b.targets, "build_seconds": round(b.seconds, 1)}

    if config.targets:
        return build("sentiment_targets", "Sentiment generation towards a per-domain target direction that every "
                     "prompt states, on real text, judged by VADER (metapl.data.sentiment).", data_dir, splits,
                     dataclasses.asdict(config), overwrite=overwrite, report=report)
    return build("sentiment_domains", "Controlled sentiment generation on real text, judged by VADER "
                 "(metapl.data.sentiment).", data_dir, splits, dataclasses.asdict(config), overwrite=overwrite,
                 report=report)
