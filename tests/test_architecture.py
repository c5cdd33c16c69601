"""The package's import structure, read from the source with `ast` (ARCHITECTURE.md): layers import downward only,
no import cycle, no module takes another package's private names, and every package lists its public names."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent / "metapl"

# Lower layers first; a module may import modules of its own layer or below (ARCHITECTURE.md).
LAYERS = [
    {"config", "runtime", "keys"},
    {"parallel"},
    {"models"},
    {"data"},
    {"losses"},
    {"bilevel"},
    {"train"},
    {"eval"},
    {"meta"},
    {"algorithms"},
    {"runs"},
    {"protocol"},
    {"cli"},
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}
PACKAGES = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement in `module`, at any depth."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [a.name for a in node.names]
            # `from metapl.models import policy` imports the submodule metapl.models.policy
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in MODULES]
            out += [(m, [], node.lineno) for m in submodules]
            out.append((base, [n for n in names if f"{base}.{n}" not in MODULES], node.lineno))
    return [(m, names, line) for m, names, line in out if m == "metapl" or m.startswith("metapl.")]


def _part(module: str) -> str:
    """The top-level package or module of metapl that `module` belongs to ("models", "cli", ...)."""
    return module.split(".")[1] if module.count(".") else module


GRAPH = {m: sorted({target for target, _, _ in _imports(m) if target in MODULES and target != m}) for m in MODULES}


def test_every_part_has_a_layer():
    parts = {_part(m) for m in MODULES if m != "metapl"}
    assert parts <= set(LAYER), f"give these a layer in LAYERS (and ARCHITECTURE.md): {sorted(parts - set(LAYER))}"


def test_layers_import_downward_only():
    bad = []
    for module in MODULES:
        if module == "metapl":
            continue
        for target, _, line in _imports(module):
            if target == "metapl" or _part(target) not in LAYER:
                continue
            if LAYER[_part(target)] > LAYER[_part(module)]:
                bad.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {module} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of `graph` (node -> successors) as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_takes_another_packages_private_names():
    bad = []
    for module in MODULES:
        for target, names, line in _imports(module):
            private = [n for n in names if n.startswith("_")]
            if private and _part(target) != _part(module):
                bad.append(f"{MODULES[module].relative_to(ROOT.parent)}:{line}: {private} from {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_lists_its_public_names(package):
    mod = importlib.import_module(f"metapl.{package}")
    assert hasattr(mod, "__all__") and mod.__all__, f"metapl.{package} has no __all__"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"metapl.{package}.__all__ names what it does not define: {missing}"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_the_architecture_example_registers_and_trains(tmp_path, monkeypatch):
    """ARCHITECTURE.md's example of adding an algorithm runs as written."""
    import re

    from metapl.runs import prepare_run_dir, read_metrics, train
    from metapl.train import spec

    monkeypatch.setattr(spec, "_REGISTRY", dict(spec._REGISTRY))  # the example's registration ends with the test
    text = (ROOT.parent / "ARCHITECTURE.md").read_text(encoding="utf-8")
    (example,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    exec(compile(example, "ARCHITECTURE.md", "exec"), {"__name__": "architecture_example"})
    overrides = ["algo=slic", "loss.beta=0.5", "steps=2", "eval_every=2", "model.hidden_size=16", "model.num_layers=1",
                 "data.synthetic.num_domains=8", "data.synthetic.num_heldout=2", "data.synthetic.pairs_per_domain=8"]
    cfg = prepare_run_dir(tmp_path / "slic", None, overrides, False)
    assert cfg.loss.beta == 0.5
    final = train(tmp_path / "slic", cfg, progress=False)
    assert "accuracy" in final and [r["step"] for r in read_metrics(tmp_path / "slic", "eval")] == [0, 2]
