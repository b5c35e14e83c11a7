"""Deploy-stage fixtures: the resolved docker-compose file, the Dockerfile's stages and the
server's real routes, so the deployment tests compare the deployment files with the project.

No Docker engine runs where these tests run: the compose file is resolved and validated by
`docker-compose config` (Debian's docker-compose), the Dockerfile is read as text.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DEPLOY_DIR = REPO_ROOT / "deploy"
BUILD_LOG = "build.log"  # beside the wheel: what `pip wheel` printed


def compose_environment(**variables: str) -> dict[str, str]:
    """A clean environment for docker-compose: the host's ELUNET_* or MODEL_REPOSITORY must not
    change what the tests resolve."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
    return {**env, **variables}


def docker_compose(*args: str, compose_file: Path = COMPOSE_FILE, **variables: str) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose; `make test` installs it)")
    return subprocess.run(
        [binary, "--project-directory", str(REPO_ROOT), "-f", str(compose_file), *args],
        capture_output=True,
        text=True,
        env=compose_environment(**variables),
        timeout=120,
    )


def compose_profiles() -> list[str]:
    """The profiles the compose file declares (read from the file itself, at collection time)."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return sorted({p for s in services.values() for p in s.get("profiles", [])})


@pytest.fixture(scope="session")
def compose() -> dict:
    """docker-compose.yml as docker-compose resolves it: anchors merged, variables at their defaults."""
    result = docker_compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


# --- the Dockerfile --------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)


def dockerfile_stages(text: str | None = None) -> dict[str, Stage]:
    """Stages by name; each holds its parent stages' instructions first (FROM <stage> inherits)."""
    text = DOCKERFILE.read_text() if text is None else text
    # Docker drops comment lines first, also inside a continued instruction, then joins lines.
    uncommented = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    logical = re.sub(r"\\\n", " ", uncommented)
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = rest.split()
            base = next(w for w in words if not w.startswith("--"))
            name = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else f"#{len(stages)}"
            inherited = list(stages[base].instructions) if base in stages else []
            current = stages[name] = Stage(name, base, inherited)
        elif current is not None:
            current.instructions.append((keyword, rest.strip()))
    return stages


def last_instruction(stage: Stage, keyword: str) -> str | None:
    found = [args for kw, args in stage.instructions if kw == keyword]
    return found[-1] if found else None


def exec_form(args: str) -> list[str]:
    """ENTRYPOINT/CMD/HEALTHCHECK CMD arguments in JSON (exec) form, else shell words."""
    args = args.strip()
    if args.startswith("["):
        return yaml.safe_load(args)
    return shlex.split(args)


# --- the server --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def serve_routes(synthetic_repository) -> set[str]:
    """Every path the real FastAPI app serves (built, not started: no model is loaded)."""
    from elunet.serve.app import create_app
    from elunet.serve.settings import ServeSettings

    app = create_app(ServeSettings(repository=synthetic_repository))
    return {route.path for route in app.routes}


def serve_default(field_name: str):
    from elunet.serve.settings import ServeSettings

    return ServeSettings.model_fields[field_name].default


def elunet_command(name: str):
    """The click command behind `elunet NAME`, or None if there is no such subcommand."""
    import typer.main

    from elunet.cli import app

    return typer.main.get_command(app).commands.get(name)


def option_names(command) -> set[str]:
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


# --- the wheel the images install ------------------------------------------------------------


@pytest.fixture(scope="session")
def elunet_wheel(tmp_path_factory) -> Path:
    """elunet's wheel, built like the Dockerfile's `wheel` stage (`pip wheel --no-deps`), from a copy
    of the sources as `docker build` gets them: no build/ or egg-info left in the shared tree.
    What the build printed is in BUILD_LOG beside it."""
    source = tmp_path_factory.mktemp("wheel-source")
    package_dirs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    for folder in {Path(d).parts[0] for d in package_dirs.values()}:
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (out / BUILD_LOG).write_text(result.stdout + result.stderr)
    (wheel,) = out.glob("elunet-*.whl")
    return wheel
