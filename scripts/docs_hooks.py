"""MkDocs hooks (mkdocs.yml `hooks:`): the reference and benchmark pages, generated from the code at build time.

Nothing here is written to docs/: each page is a generated MkDocs file, rendered from the object that is the
contract (the Typer app, the settings model, the metrics registry, the FastAPI app's OpenAPI document,
tritonclient's gRPC service descriptor, the gRPC transport's status map, the benchmarks' JSON), so a new option,
setting, metric, route or figure appears on the next `make docs` without anyone editing a page.
Guides that others add under docs/guides/ join the Guides section of the navigation by themselves.
"""

from __future__ import annotations

import ast
import http
import json
import re
import sys
import tempfile
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from figures import FIGURES, RECORD_KEYS  # noqa: E402  (where write_figures records, and what it adds to every record)

GUIDES_DIR = "guides"


def cell(value) -> str:
    """A Markdown table cell: pipes escaped, newlines folded."""
    return " ".join(str(value).split()).replace("|", "\\|")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- CLI -------------------------------------------------------------------------------------------


# Typer vendors its own copy of click, so commands and parameters are read by their (click's documented)
# attributes, not by class: ``commands`` on a group, ``param_type_name`` "option" or "argument" on a parameter.


def _option_default(param) -> str:
    if param.required:
        return "(required)"
    if param.default in (None, "", ()) or callable(param.default):
        return ""
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return param.opts[0] if param.default else param.secondary_opts[0]
        return "on" if param.default else "off"
    return f"`{param.default}`" if not isinstance(param.default, (list, tuple)) else f"`{','.join(map(str, param.default))}`"


def walk(command, path: list[str]):
    yield path, command
    if hasattr(command, "commands"):
        for name in sorted(command.commands):
            yield from walk(command.commands[name], [*path, name])


def render_cli(command, prog: str = "elunet") -> str:
    """Every command of ``command`` (a click command, e.g. ``typer.main.get_command(app)``) with every option."""
    out = ["# CLI reference\n", f"Generated from the `{prog}` command (`elunet.cli`'s Typer app) when the docs are built. "
           "Each command also answers `--help`.\n"]
    for path, cmd in walk(command, []):
        if not path:
            continue
        name = " ".join([prog, *path])
        out.append(f"## `{name}`\n")
        if cmd.help:
            out.append(cmd.help.strip().split("\n\n")[0] + "\n")
        if hasattr(cmd, "commands"):
            out.append("Subcommands: " + ", ".join(f"`{name} {sub}`" for sub in sorted(cmd.commands)) + ".\n")
            continue
        arguments = [p for p in cmd.params if p.param_type_name == "argument"]
        options = [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]
        rows = [[f"`{a.name.upper()}`" + ("" if a.required else " (optional)"), "argument", getattr(a, "help", None) or ""] for a in arguments]
        rows += [[" / ".join(f"`{o}`" for o in (*p.opts, *p.secondary_opts)), _option_default(p), p.help or ""] for p in options]
        if rows:
            out.append(table(["argument or option", "default", "meaning"], rows))
    return "\n".join(out)


# --- serve settings --------------------------------------------------------------------------------


def render_settings(model=None) -> str:
    """Every field of the serve settings model: its option, environment variable, default and description."""
    from pydantic_core import PydanticUndefined

    from elunet.serve.settings import CONFIG_ENV, ServeSettings, env_name

    model = model or ServeSettings
    rows = []
    for field, info in model.model_fields.items():
        default = "(required)" if info.default is PydanticUndefined else "unset" if info.default is None else info.default
        if isinstance(default, list):
            default = ",".join(default)
        elif isinstance(default, bool):
            default = str(default).lower()  # as the option and the environment variable take it
        rows.append([f"`--{field.replace('_', '-')}`", f"`{env_name(field)}`", f"`{default}`" if default not in ("(required)", "unset") else default,
                     info.description or ""])
    return (
        "# Serve settings\n\n"
        "Generated from `serve/settings.py`'s settings model when the docs are built. A setting comes from, highest "
        "priority first: the `elunet serve` option, the environment variable, a TOML settings file (`--config FILE` or "
        f"`{CONFIG_ENV}`; keys are the field names), the default.\n\n"
        + table(["option", "environment", "default", "meaning"], rows)
    )


# --- metrics ---------------------------------------------------------------------------------------


def render_metrics(registry=None) -> str:
    """Every metric family of the server's Prometheus registry: name as scraped, type, labels, help."""
    from elunet.serve.metrics import ServeMetrics

    if registry is None:
        metrics = ServeMetrics()
        # The model-labelled series and a failure create the labels the page shows (on a registry of their own).
        metrics.for_model("MODEL", 1).failed("REASON", 0.0)
        registry = metrics.registry
    rows = []
    for family in registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        labels = sorted({label for sample in family.samples for label in sample.labels if label not in ("le",)})
        rows.append([f"`{family.name}{suffix}`", family.type, ", ".join(f"`{label}`" for label in labels), family.documentation])
    return (
        "# Metrics\n\n"
        "Generated from the server's Prometheus registry (`serve/metrics.py`) when the docs are built; `GET /metrics` "
        "serves them. Labels are those every model version's series carries; families labelled by `reason` or "
        "`instance` gain those labels on their first observation.\n\n"
        + table(["metric", "type", "labels", "help"], rows)
    )


# --- HTTP routes -----------------------------------------------------------------------------------


def openapi_document() -> dict:
    """The OpenAPI document of the real app, built on an empty repository (explicit mode allows one)."""
    from elunet.serve.app import create_app
    from elunet.serve.settings import ServeSettings

    with tempfile.TemporaryDirectory() as repository:
        return create_app(ServeSettings(repository=Path(repository), model_control_mode="explicit")).openapi()


def render_routes(document: dict | None = None) -> str:
    document = document or openapi_document()
    rows = []
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            description = (op.get("description") or "").strip().split("\n\n")[0]
            rows.append([f"`{method.upper()} {path}`", op.get("summary", ""), description])
    return (
        "# HTTP routes\n\n"
        f"Generated from the server's OpenAPI document ({document['info']['title']} {document['info']['version']}) when "
        "the docs are built; a running server serves the same document at `/openapi.json` and Swagger UI at `/docs`.\n\n"
        + table(["route", "operation", "description"], rows)
    )


# --- gRPC ------------------------------------------------------------------------------------------


def render_grpc() -> str:
    from tritonclient.grpc import service_pb2

    from elunet.serve.grpc_server import InferenceService

    service = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    implemented = set(vars(InferenceService))
    rows = [[f"`{m.name}`", f"`{m.input_type.name}`", f"`{m.output_type.name}`",
             "implemented" if m.name in implemented else "UNIMPLEMENTED"] for m in service.methods]
    return (
        "# gRPC methods\n\n"
        f"Generated when the docs are built from tritonclient's service descriptor (`{service.full_name}`, Triton's "
        "grpc_service.proto) and the methods `serve/grpc_server.py`'s servicer defines; a method it does not define "
        "answers `UNIMPLEMENTED`. The server also serves `grpc.health.v1.Health` (service `\"\"`: the server's "
        "readiness; a model's name: that model's).\n\n"
        + table(["method", "request", "response", "elunet"], rows)
    )


# --- error statuses --------------------------------------------------------------------------------


def render_errors() -> str:
    from elunet.serve.grpc_server import STATUS_CODES

    rows = [[status, http.HTTPStatus(status).phrase, f"`{code.name}`"] for status, code in sorted(STATUS_CODES.items())]
    return (
        "# Error statuses\n\n"
        "Generated from `serve/grpc_server.py`'s `STATUS_CODES` when the docs are built. Every error is answered over "
        "HTTP as `{\"error\": \"...\"}` with the status below, and over gRPC with the code beside it; a status not "
        "listed reaches gRPC as `UNKNOWN`. When each status is given: [Serving](../guides/serving.md#errors).\n\n"
        + table(["HTTP status", "phrase", "gRPC code"], rows)
    )


# --- benchmarks ------------------------------------------------------------------------------------


def benchmarks_with_figures() -> list[Path]:
    """The benchmark scripts that record their figures as JSON (they call benchmarks/figures.py's write_figures)."""
    return sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "figures.py" and "write_figures(" in p.read_text())


def _fig_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value):
        return ", ".join(_fig_value(v) for v in value)
    if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
        return ", ".join(f"{k} {_fig_value(v)}" for k, v in value.items())
    return "–" if value is None else str(value)


def render_figures(figures: dict, level: int = 2) -> str:
    """A benchmark's JSON as Markdown: scalars as a list, lists of records as tables, nested records as sections."""
    scalars, sections = [], []
    for key, value in figures.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            header = list(dict.fromkeys(k for v in value for k in v))
            sections.append(f"{'#' * level} {key}\n\n" + table(header, [[_fig_value(v.get(k)) for k in header] for v in value]))
        elif isinstance(value, dict) and any(isinstance(v, (dict, list)) for v in value.values()):
            sections.append(f"{'#' * level} {key}\n\n" + render_figures(value, level + 1))
        else:
            scalars.append(f"- {key}: {_fig_value(value)}")
    return "\n".join(scalars) + ("\n\n" if scalars else "") + "\n".join(sections)




def render_benchmark(script: Path, record: dict | None) -> str:
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    title, _, method = doc.partition("\n\n")
    out = [f"# {script.stem}\n", f"`benchmarks/{script.name}`: {title}\n", "## Method\n", method.strip() + "\n" if method else "", "## Latest figures\n"]
    if record is None:
        out.append(f"No figures recorded yet: run `python benchmarks/{script.name}`; it writes `docs/benchmarks/{script.stem}.json`, "
                   "which this page shows on the next `make docs`. Figures recorded before the benchmarks wrote JSON: "
                   "[History](history.md).\n")
    else:
        out.append(table(["command", "date", "CPU", "CPUs", "commit"], [[f"`{record['command']}`", *(record[k] for k in RECORD_KEYS[1:])]]))
        out.append(render_figures({k: v for k, v in record.items() if k not in RECORD_KEYS}))
    return "\n".join(out)


def render_benchmark_index(scripts: list[Path]) -> str:
    rows = []
    for script in scripts:
        record = FIGURES / f"{script.stem}.json"
        data = json.loads(record.read_text()) if record.exists() else None
        doc = (ast.get_docstring(ast.parse(script.read_text())) or "").split("\n\n")[0]
        rows.append([f"[{script.stem}]({script.stem}.md)", cell(doc), data["date"] if data else "not yet recorded"])
    return (
        "# Benchmarks\n\n"
        "One page per benchmark that records its figures as JSON (`benchmarks/figures.py`: the command, date, CPU and "
        "commit with every figure, in `docs/benchmarks/NAME.json`); each page is rendered from that JSON when the docs "
        "are built. Figures are timings of the machine they were taken on: compare ratios, and rerun on yours. "
        "Older figures: [History](history.md).\n\n"
        + table(["benchmark", "what it measures", "latest figures"], rows)
    )


# --- the hooks -------------------------------------------------------------------------------------

def cli_page() -> str:
    import typer

    from elunet.cli import app

    return render_cli(typer.main.get_command(app))


REFERENCE = {
    "reference/cli.md": cli_page,
    "reference/settings.md": render_settings,
    "reference/metrics.md": render_metrics,
    "reference/http.md": render_routes,
    "reference/grpc.md": render_grpc,
    "reference/errors.md": render_errors,
}


def _title(page: Path) -> str:
    heading = re.search(r"^# (.+)$", page.read_text(), flags=re.M)
    return heading[1].strip() if heading else page.stem.replace("-", " ").capitalize()


def _section(config, name: str) -> list:
    return next(entry for entry in config["nav"] if isinstance(entry, dict) and name in entry)[name]


def on_config(config):
    """Guides that exist under docs/guides/ but are not in the navigation yet join the Guides section; each
    benchmark's generated page joins Benchmarks, before its history."""
    docs = Path(config["docs_dir"])
    guides = _section(config, "Guides")
    listed = {next(iter(item.values())) if isinstance(item, dict) else item for item in guides}
    for page in sorted((docs / GUIDES_DIR).glob("*.md")):
        uri = f"{GUIDES_DIR}/{page.name}"
        if uri not in listed:
            guides.append({_title(page): uri})
    benchmarks = _section(config, "Benchmarks")
    benchmarks[1:1] = [{script.stem: f"benchmarks/{script.stem}.md"} for script in benchmarks_with_figures()]
    return config


def on_files(files, config):
    for uri, render in REFERENCE.items():
        files.append(File.generated(config, uri, content=render()))
    scripts = benchmarks_with_figures()
    files.append(File.generated(config, "benchmarks/index.md", content=render_benchmark_index(scripts)))
    for script in scripts:
        record = FIGURES / f"{script.stem}.json"
        files.append(File.generated(config, f"benchmarks/{script.stem}.md",
                                    content=render_benchmark(script, json.loads(record.read_text()) if record.exists() else None)))
    return files
