"""Training on the real Fashion-MNIST: learning, checkpoints, exact resumption, NaN handling, DDP, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from fixtures_train import QUICK_RUN

import elunet.train.loop as loop
from elunet.contracts import WEIGHTS_FILE
from elunet.errors import ElunetError
from elunet.train.checkpoint import LATEST_FILE, METRICS_FILE, TRAIN_STATE_FILE, load_checkpoint, load_resume_state, save_run_checkpoint
from elunet.train.config import TrainConfig
from elunet.train.data import find_dataset, load_dataset

TINY = dict(limit_train=1000, epochs=2, batch_size=100, lr=0.02, seed=3)


def _quiet(_):
    pass


def test_short_run_beats_chance_and_its_checkpoint_reproduces_the_metrics(trained_checkpoint):
    ck = load_checkpoint(trained_checkpoint)
    assert ck.card.architecture == "fashion-cnn" and ck.card.activation == "elu" and ck.card.alpha == 1.0
    assert ck.card.labels[0] == "T-shirt/top" and ck.card.input_shape == (1, 28, 28)
    assert ck.card.metrics["test_acc"] > 0.6  # chance is 0.1
    test = load_dataset("fashion-mnist", "test")
    with torch.no_grad():
        logits = torch.cat([ck.model(test.images[i : i + 2000].float() / 255) for i in range(0, len(test), 2000)])
    assert (logits.argmax(1) == test.targets).float().mean().item() == pytest.approx(ck.card.metrics["test_acc"], abs=1e-4)
    log = [json.loads(ln) for ln in (trained_checkpoint.parent / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "images_per_s"):
        assert log[-1][key] > 0
    assert set(log[-1]["mean_activation"]) == {"stack1_1", "stack2_1", "stack2_2", "stack3_1", "stack3_2"}


def test_resume_gives_bit_identical_weights_after_the_dataset_moved(tmp_path):
    (tmp_path / "data").symlink_to(find_dataset("fashion-mnist"))
    whole = loop.train(TrainConfig(out=str(tmp_path / "whole"), data_dir=str(tmp_path / "data"), **TINY), log=_quiet)
    assert json.loads((whole / TRAIN_STATE_FILE).read_text())[loop.GRAD_SCALER_KEY] == {}  # disabled on the CPU
    # An interrupted run: it got as far as the epoch-1 checkpoint; then its dataset moved.
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "whole", part)
    shutil.rmtree(part / "epoch-0002")
    (part / LATEST_FILE).write_text("epoch-0001\n")
    (tmp_path / "data").rename(tmp_path / "moved")
    resumed = loop.train(TrainConfig(out=str(part), data_dir=str(tmp_path / "moved"), **TINY), resume=True, log=_quiet, given={"data_dir"})
    assert resumed.name == "epoch-0002"
    assert (resumed / WEIGHTS_FILE).read_bytes() == (whole / WEIGHTS_FILE).read_bytes()
    assert [json.loads(ln)["epoch"] for ln in (part / METRICS_FILE).read_text().splitlines()] == [1, 2]
    with pytest.raises(ElunetError, match="--lr 0.5"):
        loop.train(TrainConfig(out=str(part), **{**TINY, "lr": 0.5}), resume=True, log=_quiet)


def test_without_data_dir_a_resumed_run_looks_in_the_default_places():
    saved = dataclasses.asdict(TrainConfig(data_dir="/where/it/was", **TINY))
    assert loop.check_resume_config(TrainConfig(**TINY), saved, given=set()).data_dir is None


def test_options_that_change_the_numerics_cannot_change_on_resume():
    saved = dataclasses.asdict(TrainConfig(**TINY))
    for option, value in (("amp", False), ("channels_last", False), ("compile", True)):
        with pytest.raises(ElunetError, match=f"--{option.replace('_', '-')} {value} \\(the run has {not value}\\)"):
            loop.check_resume_config(TrainConfig(**{**TINY, option: value}), saved, given={option})


def test_the_loss_scale_survives_a_checkpoint(trained_checkpoint, tmp_path):
    # fp16 autocast (and so an enabled scaler) runs on CUDA only; the scaler's state does the same round trip on the CPU.
    scaler = loop.grad_scaler("cpu", True, {})
    scaler.scale(torch.ones(()))
    scaler.update(new_scale=1024.0)  # where a run stands after some overflow backoffs
    ck = load_checkpoint(trained_checkpoint)
    optimizer = torch.optim.SGD(ck.model.parameters(), lr=0.1)
    folder, _ = save_run_checkpoint(tmp_path / "run", 1, ck.model, ck.card, optimizer, {loop.GRAD_SCALER_KEY: scaler.state_dict()})
    _, state, _ = load_resume_state(folder)
    assert loop.grad_scaler("cpu", True, state[loop.GRAD_SCALER_KEY]).get_scale() == 1024.0


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    good_lr = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda s, step, total, lr: good_lr(s, step, total, lr) if step < total // TINY["epochs"] else 1e6)
    with pytest.raises(loop.TrainingDiverged, match="NaN.*epoch 2.*epoch-0001"):
        loop.train(TrainConfig(out=str(tmp_path), **TINY), log=_quiet)
    assert (tmp_path / LATEST_FILE).read_text().strip() == "epoch-0001"
    assert torch.isfinite(torch.cat([p.flatten() for p in load_checkpoint(tmp_path).model.parameters()])).all()


def test_progress_lines_during_an_epoch_when_output_is_not_a_terminal(tmp_path, monkeypatch):
    import elunet.train.progress as progress

    monkeypatch.setattr(progress, "LINE_MIN_SECONDS", 0.0)  # TINY's epochs take a second; the default waits 10 s between lines
    lines = []
    loop.train(TrainConfig(out=str(tmp_path), **TINY), log=lines.append)  # pytest captures stdout: not a terminal
    first_epoch = lines[1 : lines.index(next(ln for ln in lines if ln.startswith("epoch   1/2")))]
    assert [ln.split("  ")[1] for ln in first_epoch] == [f"step {s}/10 ({s * 10}%)" for s in range(1, 10)], lines
    assert all(ln.startswith("epoch 1/2") and "train loss" in ln and "img/s" in ln for ln in first_epoch)


def _elunet(*args, **kw):
    return subprocess.run([sys.executable, "-m", "elunet", *args], capture_output=True, text=True, timeout=300, **kw)


def test_cli_explains_bad_requests(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / METRICS_FILE).write_text("")
    r = _elunet("train", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "already holds a training run" in r.stderr and "--force" in r.stderr and "Traceback" not in r.stderr
    r = _elunet("train", "--out", str(tmp_path / "new"), "--resume")
    assert r.returncode == 2 and "no checkpoint to resume" in r.stderr
    r = _elunet("train", "--out", str(tmp_path / "new"), "--activation", "relu", "--alpha", "0.5")
    assert r.returncode == 2 and "no alpha" in r.stderr
    r = _elunet("train", "--out", str(tmp_path / "new"), "--dataset", "cifar10", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and "cifar-10-batches-py" in r.stderr and "data_batch_1" in r.stderr
    assert not (tmp_path / "new").exists(), "a refused command must not leave an empty --out behind"
    r = _elunet("train", "--out", str(tmp_path / "run"), "--force", "--limit-train", "100", "--batch-size", "200")
    assert r.returncode == 2 and "less than one batch" in r.stderr
    assert (tmp_path / "run" / METRICS_FILE).is_file(), "--force with a bad option must not delete the run it would replace"


def test_a_mistyped_choice_is_refused_before_the_dataset_loads(tmp_path):
    for option, value, allowed in (("--arch", "resnet", "fashion-cnn"), ("--schedule", "linear", "onecycle"), ("--device", "gpu", "cuda"),
                                   ("--optimizer", "adam", "adamw"), ("--activation", "gelu", "elu"), ("--dataset", "svhn", "cifar10")):
        r = _elunet("train", "--out", str(tmp_path / "new"), "--data-dir", str(tmp_path / "nowhere"), option, value)
        assert r.returncode == 2 and f"'{value}' is not one of" in r.stderr and allowed in r.stderr, r.stderr
        assert "not found" not in r.stderr
    assert not (tmp_path / "new").exists()


def test_train_help_groups_its_options_in_panels():
    from elunet.train import options

    r = _elunet("train", "--help", env={**os.environ, "COLUMNS": "200"})
    for panel in (options.MODEL_PANEL, options.DATA_PANEL, options.OPTIMIZATION_PANEL, options.RUN_PANEL, options.HARDWARE_PANEL):
        assert f"─ {panel} ─" in r.stdout, panel


def test_experiments_take_trains_own_option_definitions():
    import typer.main

    from elunet.cli import app

    root = typer.main.get_command(app)
    train = {p.name: p for p in root.commands["train"].params}
    for kind in ("activations", "learning-behaviour"):
        # its --bn adds variants, its --out is an experiment folder: options of its own
        shared = [p for p in root.commands["experiment"].commands[kind].params if p.name in train and p.name not in ("bn", "out")]
        assert len(shared) == 13
        for p in shared:
            same = train[p.name]
            described = lambda o: (o.opts, o.secondary_opts, o.help, o.type_descriptor.annotation, o.min, o.max, o.rich_help_panel)  # noqa: E731
            assert described(p) == described(same), p.name


def test_cli_resume_refuses_changed_options_and_explains_a_truncated_checkpoint(tmp_path):
    run = str(tmp_path / "run")
    r = _elunet("train", "--out", run, "--limit-train", "500", "--batch-size", "100", "--epochs", "2", "--lr", "0.01")
    assert r.returncode == 0, r.stderr
    # --lr 0.05 is the default: only the command line tells that it was asked for.
    r = _elunet("train", "--out", run, "--resume", "--lr", "0.05", "--epochs", "3", "--batch-size", "100")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--lr 0.05 (the run has 0.01)" in r.stderr and "--epochs 3 (the run has 2)" in r.stderr and "--batch-size" not in r.stderr.split("hint")[0]
    r = _elunet("train", "--out", run, "--resume", "--lr", "0.01", "--keep", "3")  # the run's own value, and a how-to-run option
    assert r.returncode == 0, r.stderr

    weights = tmp_path / "run" / "epoch-0002" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    r = _elunet("train", "--out", run, "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    error, hint = r.stderr.strip().splitlines()
    assert error == f"error: {weights} is truncated or corrupt (its sha256 is not the one card.json recorded)"
    assert f"echo epoch-0001 > {tmp_path / 'run' / LATEST_FILE}" in hint and "--force" in hint
    card = weights.with_name("card.json")  # a card without the sha256: safetensors' reader finds the truncation
    card.write_text(json.dumps({**json.loads(card.read_text()), "weights_sha256": None}))
    r = _elunet("train", "--out", run, "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    error, hint = r.stderr.strip().splitlines()
    assert error.startswith(f"error: {weights} is truncated or corrupt (") and "echo epoch-0001" in hint


def _torchrun(*args, log_dir, timeout=300):
    """Two CPU processes (gloo) under torchrun, each one's output in its own LOG_DIR/.../<rank>/std{out,err}.log."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--log-dir", str(log_dir), "--redirects", "3", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _rank_log(log_dir, rank: int, stream: str) -> str:
    (path,) = log_dir.glob(f"**/attempt_0/{rank}/{stream}.log")
    return path.read_text()


# Runs `elunet train` with each batch's augmentation observed: per image, whether it was flipped
# (None for a mirror-symmetric image, where a flip cannot be seen).
OBSERVE_FLIPS = """
import json, os, sys
import torch
import elunet.train.loop as loop
from elunet.cli import main

record = open(os.path.join(sys.argv[1], f"flips-{os.environ['RANK']}.jsonl"), "w")
real = loop.augment

def observed(images, aug, generator):
    out = real(images, aug, generator)
    record.write(json.dumps([None if torch.equal(i, i.flip(-1)) else not torch.equal(o, i) for i, o in zip(images, out)]) + "\\n")
    record.flush()
    return out

loop.augment = observed
sys.argv = ["elunet", *sys.argv[2:]]
main()
"""


def test_two_ddp_processes_augment_differently(tmp_path):
    (tmp_path / "observe.py").write_text(OBSERVE_FLIPS)
    r = _torchrun(str(tmp_path / "observe.py"), str(tmp_path), "train", "--out", str(tmp_path / "run"), "--limit-train", "400",
                  "--epochs", "1", "--batch-size", "50", log_dir=tmp_path / "logs", timeout=120)
    assert r.returncode == 0, _rank_log(tmp_path / "logs", 0, "stderr")[-3000:]
    flips = [[f for ln in (tmp_path / f"flips-{rank}.jsonl").read_text().splitlines() for f in json.loads(ln)] for rank in (0, 1)]
    assert len(flips[0]) == len(flips[1]) == 200  # each rank's shard: 4 steps of 50
    seen = [(a, b) for a, b in zip(*flips) if a is not None and b is not None]
    assert sum(a != b for a, b in seen) > len(seen) / 4, "rank 1 flipped exactly the images rank 0 flipped: one generator for both"


def test_a_refusal_on_rank_0_ends_every_rank_with_its_message(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / METRICS_FILE).write_text("")  # a run is there; without --force rank 0 refuses before the first barrier
    r = _torchrun("-m", "elunet", "train", "--out", str(tmp_path / "run"), "--limit-train", "400", log_dir=tmp_path / "logs", timeout=120)
    assert r.returncode != 0
    for rank in (0, 1):
        assert "already holds a training run" in _rank_log(tmp_path / "logs", rank, "stderr"), f"rank {rank}"


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    r = _torchrun("-m", "elunet", "train", "--out", str(tmp_path), "--limit-train", "2000", "--epochs", "1", "--batch-size", "50", "--lr", "0.02",
                  log_dir=tmp_path / "logs")
    r.stdout = _rank_log(tmp_path / "logs", 0, "stdout")
    assert r.returncode == 0, _rank_log(tmp_path / "logs", 0, "stderr")[-3000:]
    assert r.stdout.count("epoch   1/1") == 1  # rank 0 alone logs
    assert "x2 processes" in r.stdout and "20 steps of 50" in r.stdout  # each rank: 1000 images of its shard
    log = [json.loads(ln) for ln in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert len(log) == 1 and log[0]["step"] == 20 and log[0]["test_acc"] > 0.3
    assert load_checkpoint(tmp_path).card.metrics["test_acc"] == pytest.approx(log[0]["test_acc"])
