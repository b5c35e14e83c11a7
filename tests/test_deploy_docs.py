"""Every shell command in the README and the docs site is real: each line of every shell block is checked
against what it names — `elunet` subcommands and options against the real CLI, `torchrun` flags against its
--help, `docker-compose` services and profiles against the compose file, `curl` paths against the server's
OpenAPI document, `make` targets against the Makefile, scripts, tests, manifests and Dockerfile stages against
the repository. A command of a kind nothing here checks fails, so a guide cannot hold an unchecked command."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures_deploy import COMPOSE_FILE, DOCKERFILE, REPO_ROOT, compose_profiles, dockerfile_stages, elunet_command, option_names
from fixtures_docs import code_blocks

COMPOSE_SUBCOMMANDS_WITH_SERVICES = {"up", "build", "run", "stop", "ps", "logs"}
# Commands that name nothing this project defines.
UNCHECKED = {"rm", "."}


SHELL_FENCES = ("bash", "sh", "shell")


def shell_lines() -> list[str]:
    """Commands in the docs' shell blocks (comments dropped, one command per && part, a trailing & dropped)."""
    lines = []
    for _, block in [found for fence in SHELL_FENCES for found in code_blocks(fence)]:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines += [part.strip().removesuffix("&").strip() for part in line.split("&&")]
    return lines


def words_without_env(line: str) -> list[str]:
    words = shlex.split(line)
    while words and re.match(r"^[A-Z_0-9]+=", words[0]):
        words.pop(0)
    return words


def commands(kind: str) -> list[list[str]]:
    return [words for words in map(words_without_env, shell_lines()) if kind_of(words) == kind]


def kind_of(words: list[str]) -> str:
    return "python" if Path(words[0]).name in ("python", "python3") else words[0]


def check_elunet(words: list[str]) -> None:
    command = elunet_command(words[0])
    assert command is not None, f"`elunet {words[0]}` does not exist"
    path, rest = [words[0]], words[1:]
    while hasattr(command, "commands"):  # a command group: descend into the named subcommand
        assert rest and rest[0] in command.commands, f"`elunet {' '.join(path)}` has no subcommand {rest[:1]}"
        command = command.commands[rest[0]]
        path, rest = path + rest[:1], rest[1:]
    unknown = {w.split("=")[0] for w in rest if w.startswith("--")} - option_names(command)
    assert not unknown, f"`elunet {' '.join(path)}` has no option {unknown}"


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (REPO_ROOT / "Makefile").read_text(), flags=re.M))


CHECKED = {"elunet", "torchrun", "docker-compose", "curl", "make", "python", "bash", "kubectl", "docker", "cmake"}


def test_every_command_in_the_docs_is_of_a_kind_that_is_checked():
    kinds = {kind_of(words_without_env(line)) for line in shell_lines()}
    assert {"docker-compose", "elunet", "torchrun", "kubectl", "curl", "make", "python"} <= kinds
    assert kinds <= CHECKED | UNCHECKED, f"commands nothing checks: {sorted(kinds - CHECKED - UNCHECKED)}"


def test_elunet_commands_in_the_docs_exist():
    for words in commands("elunet"):
        check_elunet(words[1:])


def test_torchrun_command_in_the_docs_is_real():
    torchrun = shutil.which("torchrun", path=str(REPO_ROOT / ".venv" / "bin")) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun (PyTorch) is not installed")
    help_text = subprocess.run([torchrun, "--help"], capture_output=True, text=True, timeout=120).stdout
    lines = commands("torchrun")
    assert lines
    for words in lines:
        module = words.index("-m")
        assert words[module + 1] == "elunet", "torchrun starts `python -m elunet`"
        for flag in (w for w in words[1:module] if w.startswith("--")):
            assert re.search(rf"(^|[\s,\[]){re.escape(flag)}[\s=,\]]", help_text), f"torchrun has no option {flag}"
        check_elunet(words[module + 2 :])


def test_compose_commands_in_the_docs_name_real_services_and_profiles(compose):
    services = set(compose["services"])
    profiles = set(compose_profiles())
    for words in commands("docker-compose"):
        line, words = shlex.join(words), words[1:]
        while words[0] == "--profile":
            assert words[1] in profiles, line
            words = words[2:]
        sub, rest = words[0], words[1:]
        if sub not in COMPOSE_SUBCOMMANDS_WITH_SERVICES:
            continue
        names = []
        for word in rest:
            if word.startswith("-"):
                continue
            names.append(word)
            if sub == "run":
                break
        assert set(names) <= services, f"{line}: unknown services {set(names) - services}"
        if sub == "run" and len(rest) > rest.index(names[0]) + 1:
            check_elunet(rest[rest.index(names[0]) + 1 :])


def test_curl_commands_in_the_docs_name_routes_the_server_has(docs_hooks):
    # The infer routes are the ASGI middleware's, not FastAPI's: the OpenAPI document has every path.
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$") for path in docs_hooks.openapi_document()["paths"]]
    urls = [w for words in commands("curl") for w in words if re.match(r"^(https?://)?(localhost|127\.0\.0\.1):\d+/", w)]
    assert urls
    for url in urls:
        path = "/" + re.sub(r"^(https?://)?[^/]+/", "", url).split("?")[0]
        assert any(p.match(path) for p in patterns), f"curl {url}: the server has no route {path}"


def test_make_commands_in_the_docs_name_makefile_targets():
    targets = makefile_targets()
    for words in commands("make"):
        named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        assert set(named) <= targets, f"{shlex.join(words)}: no Makefile target {set(named) - targets}"


def test_python_commands_in_the_docs_run_real_scripts_with_real_options():
    for words in commands("python"):
        if words[1:3] == ["-m", "elunet"]:
            check_elunet(words[3:])
        elif words[1:3] == ["-m", "pytest"]:
            for test in (w.split("::")[0] for w in words[3:] if not w.startswith("-") and w.endswith(".py")):
                assert list(REPO_ROOT.glob(test)), f"{shlex.join(words)}: no test file {test}"
        else:
            script = REPO_ROOT / words[1]
            assert script.is_file(), f"{shlex.join(words)}: no script {words[1]}"
            source = script.read_text()
            own = words[2 : words.index("--")] if "--" in words else words[2:]  # after `--`: the wrapped tool's options
            for option in (w.split("=")[0] for w in own if w.startswith("--")):
                assert f'"{option}"' in source, f"{shlex.join(words)}: {words[1]} has no option {option}"


def test_scripts_manifests_and_sources_named_in_the_docs_exist():
    for words in commands("bash"):
        assert (REPO_ROOT / words[1]).is_file(), f"no script {words[1]}"
    for words in commands("kubectl"):
        for i, word in enumerate(words):
            if word == "-f":
                assert (REPO_ROOT / words[i + 1]).is_file(), f"no manifest {words[i + 1]}"
    for words in commands("cmake"):
        if "-S" in words:
            assert (REPO_ROOT / words[words.index("-S") + 1] / "CMakeLists.txt").is_file(), shlex.join(words)


def test_docker_commands_in_the_docs_use_the_project_s_stages_images_and_bases(compose):
    stages = dockerfile_stages()
    built = {words[words.index("-t") + 1] for words in commands("docker") if words[1] == "build"}
    images = {service.get("image") for service in compose["services"].values()}
    bases = set(re.findall(r"^ARG \w+=(\S+)$", DOCKERFILE.read_text(), flags=re.M))
    for words in commands("docker"):
        line = shlex.join(words)
        if words[1] == "build":
            assert words[words.index("--target") + 1] in stages, f"{line}: no such Dockerfile stage"
        elif words[1] == "push":
            assert words[2] in built, f"{line}: pushes an image no command in the docs builds"
        else:
            assert words[1] == "run", f"{line}: a docker command nothing checks"
            assert any(w in images | bases for w in words[2:]), f"{line}: runs neither an image of {COMPOSE_FILE.name} nor a base of the Dockerfile"


def demo_model_names() -> set[str]:
    """The models `make demo` publishes: the default run's card name, and the plugin exports' name."""
    from elunet.train.config import TrainConfig

    plugin = re.search(r"PLUGIN_NAME=\$\{PLUGIN_NAME:-([^}]+)\}", (REPO_ROOT / "scripts" / "demo.sh").read_text())[1]
    return {TrainConfig().model_name, plugin}


def test_classify_commands_in_the_docs_name_a_model_the_demo_creates_and_an_image_that_exists():
    found = commands("elunet")
    classify = [words for words in found if words[1] == "classify"]
    assert classify
    for words in classify:
        assert words[words.index("--model") + 1] in demo_model_names(), f"{shlex.join(words)} vs what `make demo` publishes: {demo_model_names()}"
        images = [w for w in words[2:] if not w.startswith("-") and w != words[words.index("--model") + 1] and "://" not in w]
        assert all((REPO_ROOT / image).is_file() for image in images), f"{shlex.join(words)}: no such image"


def test_relative_links_in_the_readme_lead_to_files():
    # The site's pages, generated ones included, have their links checked by its strict build (tests/test_docs_site.py);
    # the README's lead into docs/ as a repository browser shows it.
    readme = REPO_ROOT / "README.md"
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme.read_text()) if "://" not in t]
    assert targets
    for target in targets:
        assert (REPO_ROOT / target).exists(), f"README.md links {target}, which does not exist"
