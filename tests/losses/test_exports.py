"""The losses package: every public name importable from `metapl.losses`, and losses that only compute losses —
no module of the package samples from a model or builds data (that is `metapl.data`'s job)."""

import ast
import importlib
from pathlib import Path

import pytest

import metapl.losses
import metapl.models.sampling

LOSS_FILES = sorted(Path(metapl.losses.__file__).parent.glob("*.py"))
SUBMODULES = [f"metapl.losses.{p.stem}" for p in LOSS_FILES if p.stem != "__init__"]
# What sampling offers under any import path (metapl.models re-exports it): its public top-level names.
SAMPLING_NAMES = {n for n in vars(metapl.models.sampling) if not n.startswith("_")
                  and getattr(getattr(metapl.models.sampling, n), "__module__", None) == "metapl.models.sampling"}


def test_every_public_name_is_importable_from_the_package():
    assert len(set(metapl.losses.__all__)) == len(metapl.losses.__all__)
    for name in metapl.losses.__all__:
        assert callable(getattr(metapl.losses, name)), name
    namespace: dict = {}
    exec("from metapl.losses import *", namespace)  # noqa: S102
    assert set(metapl.losses.__all__) <= set(namespace)
    # the package lists exactly its submodules' public names
    submodule_names = set()
    for module_name in SUBMODULES:
        module = importlib.import_module(module_name)
        assert all(hasattr(module, n) for n in module.__all__), module_name
        submodule_names |= set(module.__all__)
    assert set(metapl.losses.__all__) == submodule_names


def _imports(tree: ast.AST) -> list[tuple[str, str | None]]:
    """(module, name) of every import anywhere in the file (name None for `import module`)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, a.name) for a in node.names]
    return out


@pytest.mark.parametrize("path", LOSS_FILES, ids=lambda p: p.name)
def test_losses_neither_sample_nor_build_data(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for module, name in _imports(tree):
        # no sampling: neither the module nor its names through a re-export (`from metapl.models import ...`)
        assert module != "metapl.models.sampling" and f"{module}.{name}" != "metapl.models.sampling", path.name
        assert not (module.startswith("metapl.models") and name in SAMPLING_NAMES), (path.name, name)
        # no tokenising or collating: data builders live in metapl.data
        assert module != "metapl.data.batching", (path.name, name)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            takes = {a.arg for a in args}
            # a builder takes a tokenizer (or its encode function); a loss takes arrays
            assert not takes & {"encode", "tokenizer"}, (path.name, node.name)
