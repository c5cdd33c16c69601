"""The OOD protocol: every method on the same meta-train domains and feedback, tested on the same held-out domains.

  methods  METHODS, Method, method (what each compares: reward models + solver, oracle, policies, reference)
  config   ProtocolConfig, MethodSettings, load_protocol
  runner   run_protocol (train, tune, test, reuse finished sub-runs; progress with an ETA)
  report   build_report, render, write_report (tables, per_domain.csv, plots)
  tools    evaluate_run, export_policy (a Hugging Face directory, LoRA merged), report_directory

    metapl protocol --config experiments/configs/protocol_quickstart.yaml --out runs/quickstart
"""

from metapl.protocol.config import MethodSettings, ProtocolConfig, load_protocol, protocol_from_mapping
from metapl.protocol.methods import METHODS, Method, method
from metapl.protocol.report import build_report, render, write_report
from metapl.protocol.runner import plan, run_protocol
from metapl.protocol.tools import evaluate_run, export_policy, report_directory

__all__ = ["METHODS", "Method", "MethodSettings", "ProtocolConfig", "build_report", "evaluate_run", "export_policy",
           "load_protocol", "method", "plan", "protocol_from_mapping", "render", "report_directory", "run_protocol",
           "write_report"]
