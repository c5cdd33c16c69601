"""Shared test setup: offline Hugging Face, 8 simulated CPU devices, the persistent compile cache."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# 8 simulated CPU devices for the sharding tests (tests/parallel); before JAX starts. Everything else runs on
# the first device as before.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

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
