"""experiments/fault_injection.py in miniature: kill points of two kinds on one algorithm, resumed and compared."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_killed_runs_resume_to_the_uninterrupted_state(tmp_path):
    spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "experiments" / "fault_injection.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--algo", "rm", "--kills", "2", "--no-nan", "--results", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "fault_injection.json").read_text())
    kills = [r for r in report["rows"] if "SIGKILL" in r["scenario"]]
    assert report["kill_points"] == 2 and all(r["survived"] == r["tries"] for r in kills)
    assert all(r["max_difference"] == 0.0 and r["rows_duplicated"] == 0 and r["rows_lost"] == 0 for r in kills)
