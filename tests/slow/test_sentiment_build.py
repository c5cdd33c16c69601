"""`metapl data build sentiment_domains` on the real corpora and the embedded SmolLM2 (slow: samples the model)."""

import numpy as np

from metapl.cli import main
from metapl.data.judges import VaderJudge
from metapl.data.tfds_builders import load_records, read_metadata
from tests.slow.conftest import META_CHAIN, SENTIMENT_BUILD

pytestmark = META_CHAIN


def test_build_and_show_sentiment_domains(sentiment_data, capsys):
    tmp_path = sentiment_data  # built by the session fixture with SENTIMENT_BUILD (8 pairs, 8 prompts per domain)
    args = ["data", "build", "sentiment_domains", "--data-dir", str(tmp_path), *SENTIMENT_BUILD]
    pairs_dir = tmp_path / "sentiment_domains" / "pairs" / "1.0.0"
    meta = read_metadata(pairs_dir)
    assert len(meta["train_domains"]) == 12 and len(meta["heldout_domains"]) >= 20
    assert len(meta["train_domains"]) + len(meta["heldout_domains"]) >= 24
    pairs = load_records(pairs_dir, "heldout")
    # every held-out pair is kept, or counted as discarded (the count covers both splits)
    assert len(pairs) <= 8 * len(meta["heldout_domains"]) <= len(pairs) + meta["identical_pairs_discarded"]
    judge = VaderJudge()
    for p in pairs:  # the stored margin is the judge's, on prompt + continuation (stored in float32)
        a, b = judge.score([p.prompt + p.chosen, p.prompt + p.rejected])
        assert np.isclose(p.gold_margin, a - b, atol=1e-6)
    prompts = load_records(tmp_path / "sentiment_domains" / "prompts" / "1.0.0", "heldout")
    assert len(prompts) == 8 * len(meta["heldout_domains"]) and all(p.reference.startswith(p.prompt) for p in prompts)

    capsys.readouterr()
    assert main(["data", "show", "sentiment_domains", "--data-dir", str(tmp_path), "--config", "prompts",
                 "--split", "heldout", "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("VADER") == 3 and out.count("prompt: ") == 3
    # A second build with the same settings reuses the stored data instead of sampling again.
    assert main(args) == 0
    assert read_metadata(pairs_dir)["build_seconds"] == meta["build_seconds"]
