"""Shared test setup: offline Hugging Face, the persistent compile cache, tiny reference models."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from metapl.runtime import enable_compile_cache  # noqa: E402

enable_compile_cache()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    # Tests under tests/slow are slow by location, so nobody forgets the marker.
    for item in items:
        if f"{os.sep}slow{os.sep}" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
