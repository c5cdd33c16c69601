"""One sentiment_domains build shared by the slow tests (sampling it takes minutes)."""

import pytest

from metapl.cli import main

# The build experiments/configs/meta_sentiment.yaml names (its `# build:` line); 30 held-out domains.
SENTIMENT_BUILD = ["--pairs-per-domain", "8", "--prompts-per-domain", "8", "--max-new-tokens", "12"]


# The tests that use the build mark themselves with SHARES_BUILD, so that pytest-xdist (`--dist loadgroup`) runs
# them in one worker process and the build is made once.
SHARES_BUILD = pytest.mark.xdist_group("sentiment_build")


@pytest.fixture(scope="session")
def sentiment_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    assert main(["data", "build", "sentiment_domains", "--data-dir", str(root), *SENTIMENT_BUILD]) == 0
    return root
