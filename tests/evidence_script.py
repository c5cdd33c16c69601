"""experiments/evidence.py imported as a module, for the tests of the evidence study."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "evidence.py"


def load_evidence():
    spec = importlib.util.spec_from_file_location("evidence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["evidence"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
