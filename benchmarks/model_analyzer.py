"""Triton's Model Analyzer, remote mode, against a real `elunet serve` in explicit model control: a short sweep.

    python benchmarks/model_analyzer.py [--repository DIR --model NAME]

Model Analyzer 1.58 (PyPI, with protobuf<6) is installed into its own venv under ~/.cache/elunet-test/; it
drives perf_analyzer (scripts/perf_analyzer.py's binary, with its default random input) and loads each
configuration it tries through elunet's load API. Without --repository, the tests' synthetic model is used.
It prints the sweep's table, the measurements perf_analyzer aborted, and records them for its docs page (--json).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
import perf_analyzer  # noqa: E402
from figures import add_json_option, write_figures  # noqa: E402
from fixtures_serve import LINEAR, ServerProcess, make_synthetic_repository  # noqa: E402

MODEL_ANALYZER = ["triton-model-analyzer==1.58.0", "protobuf<6"]
VENV = perf_analyzer.CACHE.parent / "model-analyzer-1.58.0"
# The statistics check perf_analyzer aborts a measurement on (issue 28's statistics consistency).
ABORT = "Server side statistics compute counts must be the same"


def config(repository: Path, model: str, server: ServerProcess, out: Path) -> str:
    return f"""model_repository: {repository}
profile_models:
  {model}:
    cpu_only: true
triton_launch_mode: remote
triton_http_endpoint: 127.0.0.1:{server.port}
triton_grpc_endpoint: {server.grpc_url}
triton_metrics_url: {server.url}/metrics
run_config_search_max_concurrency: 2
run_config_search_max_instance_count: 2
run_config_search_max_model_batch_size: 2
perf_analyzer_flags:
  measurement-interval: 500
  max-trials: 5
  stability-percentage: 100
override_output_model_repository: true
output_model_repository_path: {out / 'configs'}
export_path: {out / 'export'}
checkpoint_directory: {out / 'checkpoints'}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="a model repository (default: the tests' synthetic one)")
    parser.add_argument("--model", default=LINEAR)
    add_json_option(parser, __file__)
    args = parser.parse_args()
    if not (VENV / "bin" / "model-analyzer").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *MODEL_ANALYZER], check=True)
    binary = perf_analyzer.install()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        repository = args.repository or make_synthetic_repository(work / "repository", faulty=False)
        server = ServerProcess(repository, work / "server.log", model_control_mode="explicit", load_model=args.model, allow_unverified=True)
        try:
            server.wait_ready()
            (work / "export").mkdir()
            (work / "ma.yaml").write_text(config(repository, args.model, server, work))
            env = perf_analyzer.environment()
            env["PATH"] = f"{binary.parent}:{VENV / 'bin'}:{env['PATH']}"
            run = subprocess.run([str(VENV / "bin" / "model-analyzer"), "profile", "-f", str(work / "ma.yaml")], env=env, capture_output=True,
                                 text=True, timeout=1200)
        finally:
            server.stop()
        errors = work / "export" / "perf_analyzer_error.log"
        aborted = errors.read_text().count(ABORT) if errors.exists() else 0
        table = work / "export" / "results" / "metrics-model-inference.csv"
        rows = list(csv.DictReader(table.open())) if table.exists() else []
        print(run.stdout[-3000:] if run.returncode else "")
        for row in rows:
            print(row)
        print(f"model-analyzer exit {run.returncode}; {len(rows)} configurations in its report; {aborted} perf_analyzer measurements aborted on "
              f"{ABORT!r}")
        write_figures(args.json, {"model_analyzer": MODEL_ANALYZER, "exit": run.returncode, "report_rows": rows, "aborted_measurements": aborted})
    return 0 if run.returncode == 0 and rows and not aborted else 1


if __name__ == "__main__":
    sys.exit(main())
