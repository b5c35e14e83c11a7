"""The commands in the README and the deployment docs are real: every `elunet`, `torchrun` and `docker-compose` line
names subcommands, options, services and profiles that exist."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest
from fixtures_deploy import DEPLOY_DIR, REPO_ROOT, compose_profiles, elunet_command, option_names

DOCS = [REPO_ROOT / "README.md", DEPLOY_DIR / "triton.md", REPO_ROOT / "docs" / "guides" / "triton-metrics-and-config.md"]
COMPOSE_SUBCOMMANDS_WITH_SERVICES = {"up", "build", "run", "stop", "ps", "logs"}


def shell_lines() -> list[str]:
    """Commands in the docs' ```bash blocks (comments dropped, one command per && part)."""
    lines = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            joined = block.replace("\\\n", " ")
            for line in joined.splitlines():
                line = line.split(" #", 1)[0].strip()
                if line and not line.startswith("#"):
                    lines += [part.strip() for part in line.split("&&")]
    return lines


def words_without_env(line: str) -> list[str]:
    words = shlex.split(line)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words.pop(0)
    return words


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


def test_docs_have_commands():
    kinds = {words_without_env(line)[0] for line in shell_lines()}
    assert {"docker-compose", "elunet", "torchrun", "kubectl"} <= kinds


def test_elunet_commands_in_the_docs_exist():
    for line in shell_lines():
        words = words_without_env(line)
        if words[0] == "elunet":
            check_elunet(words[1:])


def test_torchrun_command_in_the_docs_is_real():
    torchrun = shutil.which("torchrun", path=str(REPO_ROOT / ".venv" / "bin")) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun (PyTorch) is not installed")
    help_text = subprocess.run([torchrun, "--help"], capture_output=True, text=True, timeout=120).stdout
    lines = [words_without_env(line) for line in shell_lines() if words_without_env(line)[0] == "torchrun"]
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
    for line in shell_lines():
        words = words_without_env(line)
        if words[0] != "docker-compose":
            continue
        words = words[1:]
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


def demo_model_names() -> set[str]:
    """The models `make demo` publishes: the default run's card name, and the plugin exports' name."""
    from elunet.train.config import TrainConfig

    plugin = re.search(r"PLUGIN_NAME=\$\{PLUGIN_NAME:-([^}]+)\}", (REPO_ROOT / "scripts" / "demo.sh").read_text())[1]
    return {TrainConfig().model_name, plugin}


def test_classify_commands_in_the_docs_name_a_model_the_demo_creates():
    models = [words[words.index("--model") + 1] for words in map(words_without_env, shell_lines()) if words[:2] == ["elunet", "classify"]]
    assert models and set(models) <= demo_model_names(), f"{models} vs what `make demo` publishes: {demo_model_names()}"


def test_relative_links_in_the_docs_lead_to_files():
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name} links {target}, which does not exist"
