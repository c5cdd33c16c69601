"""One sentiment_domains build shared by the slow tests (sampling it takes minutes), and the slow suite's schedule
on pytest-xdist workers."""

import fcntl

import pytest

from metapl.cli import main

# The build experiments/configs/meta_sentiment.yaml names (its `# build:` line); 30 held-out domains.
SENTIMENT_BUILD = ["--pairs-per-domain", "8", "--prompts-per-domain", "8", "--max-new-tokens", "12"]

# The slow suite's two long chains (~25 min each, side by side on a 2-core CPU): each is kept in one worker
# (`--dist loadgroup`) and both are scheduled first, on the two workers; the short tests fill in after.
META_CHAIN = pytest.mark.xdist_group("sentiment_meta")  # the build test, then meta-training and the meta-test
TRAINING_CHAIN = pytest.mark.xdist_group("sentiment_training")  # RLOO, then DPO


def pytest_collection_modifyitems(config, items):
    # A stable sort, the same in every worker (xdist requires identical collections): the chains' tests first.
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


@pytest.fixture(scope="session")
def sentiment_data(tmp_path_factory, worker_id):
    """The data directory of the build; made once per test run, by whichever worker asks first."""
    if worker_id == "master":  # one process
        root = tmp_path_factory.mktemp("sentiment")
    else:  # every worker's base temp dir lies in the run's own directory
        root = tmp_path_factory.getbasetemp().parent / "sentiment"
        root.mkdir(exist_ok=True)
    with open(root.parent / "sentiment.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits here; it then finds the build and reuses it
        assert main(["data", "build", "sentiment_domains", "--data-dir", str(root), *SENTIMENT_BUILD]) == 0
    return root
