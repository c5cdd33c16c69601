"""Notebooks executed as a user runs them: a fresh Jupyter kernel (nbclient), top to bottom, from the repository
root; any cell error fails. Notebooks are kept in git without outputs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Notebooks that load the real SmolLM2 model run in the slow suite (tests/slow/test_notebooks.py).
NEED_MODEL = {"01_models_and_sampling", "04_baselines"}


def execute(path: Path, timeout: int = 900) -> str:
    """Run every cell of the notebook at `path` in a new kernel; returns the text the cells printed."""
    import nbclient
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")
