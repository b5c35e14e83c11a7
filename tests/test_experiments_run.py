"""The experiment machinery on a tiny real run: 512 Fashion-MNIST training images, an 8x128 MLP, 2 epochs.

One experiment (2 activations x 2 seeds) is trained once for the module; the
tests then check its shared initial weights, its outputs, and that rerunning
it trains only what is missing.
"""

import dataclasses
import json
import subprocess
import sys

import pytest

from elunet.errors import ElunetError
from elunet.train.config import TrainConfig
from elunet.train.experiments import runner
from elunet.train.experiments.runs import RunKey, RunStore

TINY = TrainConfig(
    arch="mlp-8x128", limit_train=512, epochs=2, batch_size=64, lr=0.05, momentum=0.9, weight_decay=0.0,
    schedule="constant", augment=False, device="cpu",
)


def tiny_experiment(out, seeds=2, **recipe) -> runner.Experiment:
    return runner.Experiment(
        kind="activations", title="tiny", claim="a test run", base=dataclasses.replace(TINY, **recipe),
        activations=("elu", "relu"), batch_norm_variants=False, seeds=tuple(range(seeds)), out=out,
        command="elunet experiment activations (test)",
    )


# Training the module's experiment (4 runs, each loading the dataset) takes ~15 s of CPU.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    runner.run_experiment(tiny_experiment(out), log=lambda _: None)
    return out


@pytest.fixture
def counted_runs(monkeypatch):
    """The (variant, seed) of every run the runner trains from here on."""
    trained = []
    real = runner.run_one

    def counting(exp, key, log):
        trained.append((key.variant, key.seed))
        return real(exp, key, log)

    monkeypatch.setattr(runner, "run_one", counting)
    return trained


def test_every_activation_of_a_seed_starts_from_the_same_weights(finished):
    store = RunStore(finished)
    init = {(v, s): store.load(RunKey(v, s))["init_sha256"] for v in ("elu", "relu") for s in (0, 1)}
    assert all(init.values())
    assert init["elu", 0] == init["relu", 0]
    assert init["elu", 1] == init["relu", 1]
    assert init["elu", 0] != init["elu", 1]  # a seed is a different start
    # ... and the same start still trains differently: the activation is what differs.
    assert store.load(RunKey("elu", 0))["epochs"] != store.load(RunKey("relu", 0))["epochs"]


def test_records_hold_real_curves(finished):
    record = RunStore(finished).load(RunKey("elu", 0))
    assert record["status"] == "finished" and len(record["epochs"]) == 2
    last = record["epochs"][-1]
    assert 0.0 < last["test_error"] < 0.9  # better than chance on the real test split
    assert record["final_test_error"] == last["test_error"]
    assert len(last["mean_activation"]) == 8  # one per hidden layer
    assert record["epochs"][1]["train_seconds"] > record["epochs"][0]["train_seconds"] > 0
    assert not (finished / runner.WORK_DIR / "elu-seed0").exists()  # checkpoints are not kept


def test_report_and_plots_are_written(finished):
    results = json.loads((finished / runner.RESULTS_FILE).read_text())
    assert results["settings"]["arch"] == "mlp-8x128" and len(results["runs"]) == 4
    assert [t["other"] for t in results["summary"]["wilcoxon_vs_elu"]] == ["relu"]
    report = (finished / "report.md").read_text()
    for variant in ("elu", "relu"):
        assert f"| {variant} | 2 |" in report
    for png in ("curves.png", "learning_speed.png", "bias_shift.png"):
        assert (finished / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_trains_only_missing_runs(finished, counted_runs):
    runner.run_experiment(tiny_experiment(finished), log=lambda _: None)
    assert counted_runs == []  # everything was finished
    runner.run_experiment(tiny_experiment(finished, seeds=3), log=lambda _: None)
    assert counted_runs == [("elu", 2), ("relu", 2)]
    assert "| elu | 3 |" in (finished / "report.md").read_text()


def test_resume_with_other_settings_is_refused(finished, counted_runs):
    with pytest.raises(ElunetError, match="epochs: 2 -> 3"):
        runner.run_experiment(tiny_experiment(finished, epochs=3), log=lambda _: None)
    assert counted_runs == []


def test_cli_rejects_an_unknown_activation(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "elunet", "experiment", "activations", "--activations", "elu,swish", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "unknown swish" in result.stderr and "hint" in result.stderr
