"""The report, results.json and plots, written from synthetic run records (no training here).

The records are synthetic on purpose: their figures are chosen so the expected
ranking, tests and thresholds are known. The real-data path is in
test_experiments_run.py.
"""

import json

import pytest

from elunet.train.experiments.runner import PLAN_FILE, RESULTS_FILE, write_outputs
from elunet.train.experiments.runs import RunKey, RunStore

VARIANTS = ["elu", "srelu", "lrelu", "relu"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_record(variant: str, seed: int) -> dict:
    """A made-up run: ELU best, then the paper's order; losses fall each epoch; ELU's activations nearest zero."""
    rank = VARIANTS.index(variant)
    final_error = 0.10 + 0.01 * rank + 0.001 * seed
    losses = [1.0 + 0.1 * rank, 0.6 + 0.1 * rank, 0.3 + 0.1 * rank]
    return {
        "status": "finished",
        "message": None,
        "init_sha256": f"seed{seed}",
        "wall_seconds": 2.0,
        "resumed": False,
        "final_test_error": final_error,
        "epochs": [
            {
                "epoch": e + 1,
                "train_loss": loss,
                "test_loss": loss,
                "test_error": final_error + 0.01 * (2 - e),
                "train_seconds": 1.0 * (e + 1),
                "mean_activation": {"stack1_1": 0.05 * rank + 0.01 * e, "stack2_1": 0.1 * rank},
            }
            for e, loss in enumerate(losses)
        ],
    }


def make_synthetic_experiment(tmp_path):
    store = RunStore(tmp_path)
    store.open({"experiment": "activations", "dataset": "fashion-mnist", "arch": "fashion-cnn"})
    plan = {"title": "synthetic", "claim": "synthetic records", "variants": VARIANTS, "seeds": [0, 1, 2, 3, 4], "command": "elunet experiment activations --seeds 5", "loss_threshold": None}
    (tmp_path / PLAN_FILE).write_text(json.dumps(plan))
    for variant in VARIANTS:
        for seed in range(5):
            store.save(RunKey(variant, seed), synthetic_record(variant, seed))
    return tmp_path


@pytest.fixture
def synthetic_experiment(tmp_path):
    return make_synthetic_experiment(tmp_path)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One synthetic experiment with its outputs written (plotting is the slow part: done once)."""
    out = make_synthetic_experiment(tmp_path_factory.mktemp("synthetic"))
    write_outputs(out)
    return out


def test_report_tables_and_verdict(written):
    report = (written / "report.md").read_text()
    assert "elunet experiment activations --seeds 5" in report
    error_rows = [line for line in report.splitlines() if line.startswith("| ") and "±" in line and "reached" not in line]
    for variant in VARIANTS:
        assert any(line.startswith(f"| {variant} | 5 |") for line in error_rows), variant
    assert "| elu | 5 | 10.20 ± 0.16 |" in report
    assert "measured **elu < srelu < lrelu < relu**" in report and "ordering **held**" in report
    # 5 seeds, all in ELU's favour: p = 0.0625, and the report says why it cannot be lower.
    assert "| 5 / 0 / 0 | -1.00 | 0.0625 |" in report
    assert "2/2^5 = 0.0625" in report
    assert "paper, CIFAR-100" not in report  # not the paper's setting
    assert "Smallest mean absolute activation: **elu**" in report


def test_learning_speed_at_an_early_and_a_late_threshold(written):
    summary = json.loads((written / RESULTS_FILE).read_text())["summary"]
    # late: relu's final loss 0.6, the highest; early: sqrt(1.0 * 0.6) with elu's first-epoch loss 1.0, the lowest.
    assert summary["loss_thresholds"] == pytest.approx([0.6**0.5, 0.6])
    early, late = ({v: s["epochs"]["mean"] for v, s in entry["variants"].items()} for entry in summary["learning_speed"])
    assert early == {"elu": 2, "srelu": 2, "lrelu": 3, "relu": 3}  # at epoch 2: srelu 0.7, lrelu 0.8 > 0.7746
    assert late == {"elu": 2, "srelu": 3, "lrelu": 3, "relu": 3}  # 0.6 <= 0.6 at elu's epoch 2
    assert summary["learning_speed"][1]["variants"]["relu"]["reached"] == 5


def test_plots_are_pngs(written):
    for name in ("curves.png", "learning_speed.png", "bias_shift.png"):
        data = (written / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name
        assert f"]({name})" in (written / "report.md").read_text()


def test_paper_figures_beside_measured_ones_for_the_paper_setting(synthetic_experiment):
    settings = synthetic_experiment / "experiment.json"
    settings.write_text(json.dumps({"experiment": "activations", "dataset": "cifar100", "arch": "elu-cifar11"}))
    report = write_outputs(synthetic_experiment).read_text()
    assert "paper, CIFAR-100 (%)" in report
    assert "28.75 ± 0.24" in report and "31.56 ± 0.37" in report


def test_diverged_runs_are_listed_not_counted(synthetic_experiment):
    store = RunStore(synthetic_experiment)
    record = synthetic_record("relu", 4) | {"status": "diverged", "message": "loss became NaN", "final_test_error": None}
    store.save(RunKey("relu", 4), record)
    report = write_outputs(synthetic_experiment).read_text()
    assert "relu seed 4: diverged: loss became NaN" in report
    assert "| relu | 4 |" in report


def test_verdict_names_the_direction_of_significant_differences():
    from elunet.train.experiments.report import _verdict
    from elunet.train.experiments.summary import summarize

    records = []
    for seed in range(6):
        for variant in VARIANTS:
            record = synthetic_record(variant, seed) | {"variant": variant, "seed": seed}
            if variant == "srelu":  # synthetic: SReLU beats ELU in every seed
                record["final_test_error"] = 0.05
            records.append(record)
    verdict = "\n".join(_verdict(summarize(records, VARIANTS, {})))
    assert "2/2^6 = 0.0312" in verdict
    assert "significant at p < 0.05: srelu (ELU worse), lrelu (ELU better), relu (ELU better)" in verdict
    assert "measured **srelu < elu < lrelu < relu**" in verdict and "did not hold" in verdict


def test_batch_norm_section_pairs_each_activation_with_its_bn_variant():
    from elunet.train.experiments.report import _batch_norm_section
    from elunet.train.experiments.summary import summarize

    variants = VARIANTS + [f"{v}+bn" for v in VARIANTS]
    records = []
    for seed in range(5):
        for variant in variants:
            record = synthetic_record(variant.removesuffix("+bn"), seed) | {"variant": variant, "seed": seed}
            if variant == "relu+bn":  # synthetic: batch norm helps ReLU in every seed, changes nothing else
                record["final_test_error"] -= 0.05
            records.append(record)
    section = "\n".join(_batch_norm_section(summarize(records, variants, {})))
    assert "| relu | 13.20 ± 0.16 | 8.20 ± 0.16 | 5 / 0 / 0 | -5.00 | 0.0625 |" in section
    assert "| elu | 10.20 ± 0.16 | 10.20 ± 0.16 | 0 / 0 / 5 | +0.00 | 1.0000 |" in section
    assert "lowered the mean error of: relu." in section
    assert "ELU without batch norm did not beat ReLU with it" in section
