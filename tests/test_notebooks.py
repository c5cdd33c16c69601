"""The notebooks that need no real model run top to bottom in a fresh kernel; every notebook is kept without
outputs (tests/slow/test_notebooks.py runs the ones that load SmolLM2)."""

import json

import pytest

from tests.notebook_runner import NEED_MODEL, NOTEBOOKS, execute

FAST = [p for p in NOTEBOOKS if p.stem not in NEED_MODEL]


@pytest.mark.parametrize("path", FAST, ids=[p.stem for p in FAST])
def test_notebook_runs(path):
    execute(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_kept_without_outputs(path):
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, f"{path.name} cell {i}: strip outputs"


def test_the_notebooks_are_there():
    assert {p.stem for p in NOTEBOOKS} >= {"01_models_and_sampling", "02_bilevel_hypergradients", "03_meta_vs_bt"}
