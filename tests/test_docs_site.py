"""The documentation site: it builds strictly (broken links, anchors and references fail), its reference pages are
generated from the code and follow it (a new option or setting appears without a page being edited), benchmark
pages are rendered from the JSON the benchmarks write, and the built home page renders with its theme."""

from __future__ import annotations

import argparse
import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import typer
from fixtures_docs import REPO_ROOT

from elunet.cli import app
from elunet.serve.settings import ServeSettings, env_names

BUILD_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # as `make docs` builds it: Material's end-of-life banner off


@pytest.fixture(scope="module")
def site(tmp_path_factory, docs_hooks) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env=BUILD_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stdout + done.stderr, done.stderr
    return out


def page_text(site: Path, uri: str) -> str:
    return (site / uri / "index.html").read_text()


def test_the_getting_started_page_is_the_readme_s_text(site):
    page = html.unescape(re.sub(r"<[^>]+>", "", page_text(site, "getting-started")))  # the text a reader sees
    assert "--8<--" not in page
    for line in ("make demo", "elunet train --epochs 2 --out runs/demo --force", "elunet[serve]", "Not run on a GPU, nor with TensorRT"):
        assert line in page


def test_the_site_builds_strictly_with_every_section(site):
    for uri in ["getting-started", "guides/train", "guides/experiments", "guides/export", "guides/int8", "guides/tensorrt",
                "guides/model-repository", "guides/serving", "guides/live-repository", "guides/clients", "guides/deploy",
                "guides/triton", "reference/cli", "reference/settings", "reference/metrics", "reference/http", "reference/grpc",
                "reference/errors", "triton-compatibility", "benchmarks", "benchmarks/history", "verification", "development"]:
        assert (site / uri / "index.html").is_file(), f"no page {uri}"
    assert page_text(site, "guides/experiments").count("<img") >= 3, "the experiments guide shows the results' plots"
    assert "img/pipeline.svg" in (site / "index.html").read_text()
    assert "img/request-path.svg" in page_text(site, "development") and "img/request-path.svg" in page_text(site, "guides/clients")


def test_a_broken_link_fails_the_build(tmp_path):
    # Strict mode is what makes CI catch a broken link: check it does, on a copy of the docs with one bad link.
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (it comes with elunet[docs], part of elunet[dev])")
    docs = tmp_path / "docs"
    shutil.copytree(REPO_ROOT / "docs", docs)
    shutil.copy(REPO_ROOT / "README.md", tmp_path)  # getting-started.md includes its sections
    (docs / "guides" / "train.md").write_text((docs / "guides" / "train.md").read_text() + "\n[gone](no-such-page.md#nowhere)\n")
    config = (REPO_ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}").replace(
        "scripts/docs_hooks.py", str(REPO_ROOT / "scripts" / "docs_hooks.py"))
    (tmp_path / "mkdocs.yml").write_text(config)
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=BUILD_ENV)
    assert done.returncode != 0 and "no-such-page.md" in done.stderr, done.stderr


# --- the generated reference -------------------------------------------------------------------


def test_the_cli_reference_lists_every_command_and_option(docs_hooks):
    command = typer.main.get_command(app)
    page = docs_hooks.render_cli(command)
    for path, cmd in docs_hooks.walk(command, []):
        if not path:
            continue
        assert f"## `elunet {' '.join(path)}`" in page
        section = page.split(f"## `elunet {' '.join(path)}`\n", 1)[1].split("\n## ", 1)[0]
        for param in getattr(cmd, "params", []):
            for opt in (*param.opts, *param.secondary_opts) if param.param_type_name == "option" and not param.hidden else []:
                assert f"`{opt}`" in section, f"elunet {' '.join(path)}: {opt} missing"


def test_a_new_cli_option_appears_in_the_reference_without_editing_a_page(docs_hooks):
    scratch = typer.Typer()

    @scratch.command()
    def serve(repository: str, brand_new_option: int = typer.Option(7, help="an option added after the page was written")):
        """Serve."""

    @scratch.command()
    def other():
        """Another command."""

    page = docs_hooks.render_cli(typer.main.get_command(scratch))
    assert "| `--brand-new-option` | `7` | an option added after the page was written |" in page


def settings_documented(page: str) -> dict[str, str]:
    """option -> environment variable, from a rendered settings page's table."""
    return dict(re.findall(r"^\| `(--[a-z-]+)` \| `(ELUNET_[A-Z_]+)` \|", page, flags=re.M))


def test_the_settings_reference_documents_every_setting_and_nothing_else(docs_hooks):
    documented = settings_documented(docs_hooks.render_settings())
    settings = env_names()
    assert set(documented.values()) == set(settings.values()), (
        f"undocumented: {sorted(set(settings.values()) - set(documented.values()))}, "
        f"documented but no setting: {sorted(set(documented.values()) - set(settings.values()))}"
    )
    assert documented == {f"--{field.replace('_', '-')}": env for field, env in settings.items()}, "an option and its variable disagree"


def test_a_new_setting_appears_in_the_reference_without_editing_a_page(docs_hooks):
    from pydantic import Field

    class Scratch(ServeSettings):
        warm_up_images: int = Field(3, description="a setting added after the page was written")

    page = docs_hooks.render_settings(Scratch)
    assert "| `--warm-up-images` | `ELUNET_WARM_UP_IMAGES` | `3` | a setting added after the page was written |" in page


def test_the_metrics_reference_lists_every_family_of_the_server_s_registry(docs_hooks):
    from elunet.serve.metrics import ServeMetrics

    page = docs_hooks.render_metrics()
    families = list(ServeMetrics().registry.collect())
    assert families
    for family in families:
        assert re.search(rf"^\| `{family.name}(_total)?` \| {family.type} \|", page, flags=re.M), f"{family.name} missing"


def test_the_routes_reference_lists_every_operation_of_the_openapi_document(docs_hooks):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # FastAPI warns of what makes a client generator stumble, e.g. a duplicate operation id
        document = docs_hooks.openapi_document()
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    page = docs_hooks.render_routes(document)
    operations = [(method, path) for path, ops in document["paths"].items() for method in ops]
    assert ("post", "/v2/models/{model}/infer") in operations
    for method, path in operations:
        assert f"`{method.upper()} {path}`" in page


def test_the_grpc_reference_marks_what_elunet_implements(docs_hooks):
    from tritonclient.grpc import service_pb2

    from elunet.serve.grpc_server import InferenceService

    page = docs_hooks.render_grpc()
    for method in service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        state = "implemented" if method.name in vars(InferenceService) else "UNIMPLEMENTED"
        assert re.search(rf"^\| `{method.name}` \|.*\| {state} \|$", page, flags=re.M), f"{method.name} not marked {state}"
    assert "| implemented |" in page and "| UNIMPLEMENTED |" in page


def test_the_errors_reference_gives_every_status_its_grpc_code(docs_hooks):
    from elunet.serve.grpc_server import STATUS_CODES

    page = docs_hooks.render_errors()
    for status, code in STATUS_CODES.items():
        assert re.search(rf"^\| {status} \| [^|]+ \| `{code.name}` \|$", page, flags=re.M)


# --- benchmarks and navigation -----------------------------------------------------------------


def test_a_benchmark_page_is_rendered_from_the_json_write_figures_writes(docs_hooks, tmp_path):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from figures import write_figures
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    record_path = tmp_path / "serve_peers.json"
    write_figures(record_path, {"connections": 64, "models": {"fashion-cnn": {
        "rows": [{"name": "MLServer", "requests_per_s": 1594.2, "p99_ms": 85.0}, {"name": "elunet JSON", "requests_per_s": 3431.0, "p99_ms": 43.1}],
        "served_over_raw": 0.87}}})
    record = json.loads(record_path.read_text())
    page = docs_hooks.render_benchmark(REPO_ROOT / "benchmarks" / "serve_peers.py", record)
    assert f"`{record['command']}`" in page and record["date"] in page and record["commit"] in page and str(record["cpu"]) in page
    assert "## Method" in page and "MLServer" in page.split("## Latest figures")[0], "the method comes from the script's docstring"
    assert "| name | requests_per_s | p99_ms |" in page and "| elunet JSON | 3431 | 43.1 |" in page
    assert "- served_over_raw: 0.87" in page
    assert "No figures recorded yet" in docs_hooks.render_benchmark(REPO_ROOT / "benchmarks" / "serve_peers.py", None)


def test_every_benchmark_that_records_json_gets_a_page(docs_hooks, site):
    scripts = docs_hooks.benchmarks_with_figures()
    assert {s.stem for s in scripts} >= {"serve_peers"}
    for script in scripts:
        assert (site / "benchmarks" / script.stem / "index.html").is_file()


def test_every_benchmark_records_its_figures_for_its_page_unless_told_not_to(docs_hooks):
    helpers = {"figures", "wrk_load", "grpc_load"}  # what the benchmarks import or start: they measure nothing of their own
    benchmarks = {p.stem for p in (REPO_ROOT / "benchmarks").glob("*.py")} - helpers
    assert {s.stem for s in docs_hooks.benchmarks_with_figures()} == benchmarks
    for name in sorted(benchmarks):
        done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and f"docs/benchmarks/{name}.json" in " ".join(done.stdout.split()), (name, done.stdout[-500:], done.stderr[-500:])
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from figures import add_json_option
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    parser = argparse.ArgumentParser()
    add_json_option(parser, "serve_load.py")
    assert parser.parse_args([]).json == REPO_ROOT / "docs" / "benchmarks" / "serve_load.json"
    assert parser.parse_args(["--json", ""]).json is None


def test_a_guide_added_under_docs_guides_joins_the_navigation(docs_hooks, tmp_path):
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "train.md").write_text("# Train\n")
    (tmp_path / "guides" / "shared-memory.md").write_text("# System shared memory\n")
    config = {"docs_dir": str(tmp_path), "nav": [{"Guides": [{"Train": "guides/train.md"}]}, {"Benchmarks": ["benchmarks/index.md"]}]}
    docs_hooks.on_config(config)
    assert config["nav"][0]["Guides"] == [{"Train": "guides/train.md"}, {"System shared memory": "guides/shared-memory.md"}]


# --- the rendered home page --------------------------------------------------------------------


def test_the_home_page_renders_with_its_theme_in_headless_chromium(site, tmp_path):
    spec = importlib.util.spec_from_file_location("docs_screenshot", REPO_ROOT / "scripts" / "docs_screenshot.py")
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    browser = shot.chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian package chromium; `make test` installs it)")
    png = tmp_path / "home.png"
    shot.screenshot(site, png, browser)
    assert shot.check(png) == []
    # The check itself notices a theme that did not load: the same site without its stylesheets.
    broken = shutil.copytree(site, tmp_path / "broken")
    for css in (broken / "assets" / "stylesheets").glob("*.css"):
        css.write_text("")
    bare = tmp_path / "bare.png"
    shot.screenshot(broken, bare, browser)
    assert any("primary colour" in problem for problem in shot.check(bare))
