"""The shared core: model card, contracts, repository layout, CLI root."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from elunet.card import ModelCard, Preprocessing
from elunet.contracts import elu_plugin_contract
from elunet.errors import ElunetError
from elunet.repository import ModelRepository, check_model_name

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_card(**overrides) -> ModelCard:
    fields = dict(
        name="demo",
        architecture="fashion-cnn",
        activation="elu",
        alpha=1.0,
        dataset="fashion-mnist",
        labels=["a", "b", "c"],
        preprocessing=Preprocessing(channels=1, height=28, width=28, color_mode="L", normalization="meanstd"),
    )
    fields.update(overrides)
    return ModelCard(**fields)


def test_card_round_trip(tmp_path):
    card = make_card(metrics={"test_accuracy": 0.9})
    card.save(tmp_path / "card.json")
    again = ModelCard.load(tmp_path / "card.json")
    assert again == card
    assert again.input_shape == (1, 28, 28)
    assert again.num_classes == 3


def test_card_rejects_unknown_fields_with_a_clear_error(tmp_path):
    data = json.loads(make_card().to_json())
    data["labelz"] = ["x"]
    (tmp_path / "card.json").write_text(json.dumps(data))
    with pytest.raises(ElunetError, match="labelz"):
        ModelCard.load(tmp_path / "card.json")


def test_missing_card_names_the_path(tmp_path):
    with pytest.raises(ElunetError, match=str(tmp_path)):
        ModelCard.load(tmp_path / "card.json")


def test_plugin_contract_has_the_fields_the_exporter_writes():
    c = elu_plugin_contract()
    assert c.op_type == c.plugin_name
    assert "." not in c.plugin_namespace
    assert set(c.fields) == {"alpha"}


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 65, "a..b"])
def test_model_names_cannot_escape_the_repository(bad):
    with pytest.raises(ElunetError):
        check_model_name(bad)


def test_repository_ignores_folders_that_are_not_versions(tmp_path):
    repo = ModelRepository(tmp_path)
    (tmp_path / "demo" / "1").mkdir(parents=True)
    make_card().save(tmp_path / "demo" / "1" / "card.json")
    (tmp_path / "demo" / ".tmp-2").mkdir()
    assert repo.models() == ["demo"]
    assert [v.version for v in repo.versions("demo")] == [1]
    assert repo.get("demo").card.name == "demo"
    with pytest.raises(ElunetError, match="no version 7"):
        repo.get("demo", 7)


def test_cli_help_lists_the_stages():
    import typer.main

    from elunet.cli import app

    out = subprocess.run([sys.executable, "-m", "elunet", "--help"], capture_output=True, text=True, check=True).stdout
    # A command's row: its name after the box border (rich) or two spaces (plain click); not options, not wrapped text.
    listed = {m[1] for line in out.splitlines() if (m := re.match(r"^(?:│ |  )([a-z][a-z-]*)\s{2,}\S", line))}
    # The README's pipeline diagram names the stages' commands; every command of every stage is listed.
    diagram = (REPO_ROOT / "README.md").read_text().split("```", 2)[1]
    stages = set(re.findall(r"elunet ([a-z-]+)", diagram))
    commands = set(typer.main.get_command(app).commands)
    assert {"train", "export", "serve", "build-engine"} <= stages and stages <= commands
    assert listed == commands, f"--help lists {sorted(listed)}, the CLI has {sorted(commands)}"
