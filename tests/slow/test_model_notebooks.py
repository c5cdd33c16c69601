"""The notebooks that load the real SmolLM2 model run top to bottom in a fresh kernel (slow)."""

import pytest

from tests.notebook_runner import NEED_MODEL, NOTEBOOKS, execute

SLOW = [p for p in NOTEBOOKS if p.stem in NEED_MODEL]


@pytest.mark.parametrize("path", SLOW, ids=[p.stem for p in SLOW])
def test_notebook_runs(path):
    printed = execute(path)
    if path.stem == "01_models_and_sampling":
        assert "Paris" in printed


def test_there_are_model_notebooks():
    assert SLOW
