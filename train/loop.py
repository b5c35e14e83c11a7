"""The training loop behind `elunet train`, readable top to bottom.

    config -> data -> model (+ fitted normalization) -> optimizer
    for each epoch: reseed, shuffle/shard, augment, step (lr from the schedule),
                    evaluate, measure mean activations, log a JSONL line, checkpoint

Exact resumption: every random draw of an epoch (shuffle, augmentation,
dropout) comes from generators seeded by (seed, epoch, rank) at the start of
the epoch, and checkpoints are written at epoch ends with the optimizer state
and the step count (the learning rate is a pure function of the step). So a
resumed run draws the very same numbers as an uninterrupted one and, on the
same machine, reaches bit-identical weights.

Under `torchrun` each process trains on its own shard with DistributedDataParallel
(gloo on CPU, nccl on CUDA); rank 0 alone evaluates, logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection

import torch
import torch.nn.functional as F
from torch import nn

from elunet.card import CARD_FILE, ModelCard
from elunet.errors import ElunetError
from elunet.train.activations import ACTIVATION_MODULES
from elunet.train.augment import augment
from elunet.train.checkpoint import (
    CHECKPOINT_PREFIX,
    LATEST_FILE,
    METRICS_FILE,
    load_resume_state,
    load_weights_into,
    resolve_checkpoint,
    save_run_checkpoint,
)
from elunet.train.config import DEVICE_NAMES, RUNTIME_FIELDS, TrainConfig
from elunet.train.data import ImageDataset, load_dataset
from elunet.train.models import build_model, describe_model
from elunet.train.progress import EpochProgress
from elunet.train.schedules import lr_at

# Images of the training split on which the per-layer mean activation (the paper's bias-shift signal) is measured.
ACTIVATION_PROBE_IMAGES = 1000
NAN_CHECK_EVERY = 50  # steps; checking every step would sync a GPU each step
GRAD_SCALER_KEY = "grad_scaler"  # in a checkpoint's train state


class TrainingDiverged(ElunetError):
    pass


# ---------------------------------------------------------------- processes and devices


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """One process, or one of `torchrun --nproc_per_node N`'s processes (it sets RANK/WORLD_SIZE)."""
    if device not in DEVICE_NAMES:
        raise ElunetError(f"unknown --device {device!r}", hint=f"use one of: {', '.join(DEVICE_NAMES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ElunetError("--device cuda, but PyTorch sees no CUDA GPU", hint="use --device cpu, or install a CUDA build of torch on a GPU machine")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    import torch.distributed as tdist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    if not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), torch.device(f"cuda:{local}" if use_cuda else "cpu"))


def _barrier(dist: Dist) -> None:
    if dist.world > 1:
        torch.distributed.barrier()


def _on_main(dist: Dist, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0, its result on every rank; an ElunetError there is raised on every rank
    with its message, instead of leaving the others waiting for rank 0 until torchrun times out."""
    if dist.world == 1:
        return work()
    outcome: list[Any] = [None]
    if dist.is_main:
        try:
            outcome[0] = ("result", work())
        except ElunetError as exc:
            outcome[0] = ("error", exc.message, exc.hint)
    torch.distributed.broadcast_object_list(outcome, src=0)
    if outcome[0][0] == "error":
        _, message, hint = outcome[0]
        torch.distributed.destroy_process_group()
        raise ElunetError(message if dist.is_main else f"rank 0: {message}", hint=hint)
    return outcome[0][1]


def _any_rank(flag: bool, dist: Dist) -> bool:
    if dist.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=dist.device)
    torch.distributed.all_reduce(t)
    return bool(t.item())


def seed_epoch(seed: int, epoch: int, rank: int) -> tuple[torch.Generator, torch.Generator]:
    """Seed the global RNG (dropout) and return the (shuffle, augmentation) generators of one epoch.

    The shuffle is the same on every rank (one permutation, sharded); the augmentation and the
    dropout are seeded by rank, or rank r's i-th image would get exactly rank 0's crop and flip.
    """
    torch.manual_seed(seed * 1_000_003 + epoch * 1009 + rank)
    augmentation = torch.Generator().manual_seed(int(torch.randint(2**62, ())))  # a stream of its own, not dropout's
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch), augmentation


# ---------------------------------------------------------------- one step, one evaluation


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 NCHW -> float [0, 1] on the device: the network's input contract."""
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def grad_scaler(device_type: str, enabled: bool, state: dict[str, Any]) -> torch.amp.GradScaler:
    """fp16 autocast's loss scaler, continuing from a checkpoint's ``state``: its scale adapts during
    the run, so a resumed run must start from the scale the interrupted one had reached."""
    scaler = torch.amp.GradScaler(device_type, enabled=enabled)
    if enabled and state:
        scaler.load_state_dict(state)
    return scaler


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, scaler, amp_ctx) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, backward, update. Returns (loss, correct) as tensors so the GPU is never synced here."""
    with amp_ctx:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), (logits.argmax(1) == y).sum()


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageDataset, device: torch.device, channels_last: bool, batch_size: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on a whole split, in float32 even when training uses autocast:
    the card's accuracy is that of the weights it is saved with, as export and serving run them."""
    model.eval()
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    for i in range(0, len(data), batch_size):
        x = to_input(data.images[i : i + batch_size], device, channels_last)
        y = data.targets[i : i + batch_size].to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / len(data), correct.item() / len(data)


@torch.no_grad()
def mean_activations(model: nn.Module, images: torch.Tensor, device: torch.device, channels_last: bool) -> dict[str, float]:
    """The mean output of each activation layer on fixed training images: the paper's bias-shift signal."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, ACTIVATION_MODULES):
            short = name.removeprefix("body.").removesuffix(".act")
            hooks.append(module.register_forward_hook(lambda _m, _i, out, key=short: sums.__setitem__(key, sums.get(key, 0) + out.float().mean() * len(out))))
    try:
        for i in range(0, len(images), 500):
            model(to_input(images[i : i + 500], device, channels_last))
    finally:
        for h in hooks:
            h.remove()
    return {k: round(v.item() / len(images), 6) for k, v in sums.items()}


# ---------------------------------------------------------------- the run folder


def _run_files(out: Path) -> list[Path]:
    return [p for p in out.glob("*") if p.name in (METRICS_FILE, LATEST_FILE) or p.name.startswith(CHECKPOINT_PREFIX)] if out.is_dir() else []


def check_run_dir(cfg: TrainConfig, resume: bool, force: bool) -> Path | None:
    """The checkpoint to resume from (or None), after checking what --out holds; changes nothing."""
    out = Path(cfg.out)
    if resume:
        if not (out / LATEST_FILE).is_file():
            raise ElunetError(f"--resume: {out} holds no checkpoint to resume from", hint="start the run without --resume")
        return resolve_checkpoint(out)
    ours = _run_files(out)
    if ours and not force:
        raise ElunetError(
            f"{out} already holds a training run ({', '.join(sorted(p.name for p in ours)[:4])})",
            hint="continue it with --resume, replace it with --force, or choose another --out",
        )
    return None


def clear_run_dir(out: Path) -> None:
    """Remove a run replaced by --force and create --out: only once every option has been checked,
    so that a mistyped option neither deletes the old run nor leaves an empty folder."""
    for p in _run_files(out):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def check_resume_config(cfg: TrainConfig, saved: dict[str, Any], given: Collection[str] | None = None) -> TrainConfig:
    """The saved run's config, with the how-to-run fields of ``cfg``.

    ``given``: the fields the caller chose (the CLI: the options on its command line); None: all
    of them. A chosen field that defines the run and differs from the run's value is an error
    listing every such difference: a resumed run is the same run, and a changed --lr or --epochs
    would change the schedule midway and lose the exact continuation.
    """
    stored = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    chosen = TrainConfig.__dataclass_fields__.keys() if given is None else given
    differ = [
        f"--{f.replace('_', '-')} {getattr(cfg, f)} (the run has {getattr(stored, f)})"
        for f in TrainConfig.__dataclass_fields__
        if f in chosen and f not in RUNTIME_FIELDS and getattr(cfg, f) != getattr(stored, f)
    ]
    if differ:
        raise ElunetError(
            f"--resume continues the run in {cfg.out} with the options it was started with, but these differ: " + "; ".join(differ),
            hint="drop those options (or give the run's values) to continue it; to train with the new ones, start a new run with another --out, or replace this one with --force",
        )
    return dataclasses.replace(stored, **{f: getattr(cfg, f) for f in RUNTIME_FIELDS})


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    with open(out / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(out: Path, epochs_done: int) -> None:
    """Drop log lines of epochs after the checkpoint being resumed (they will be trained again)."""
    path = out / METRICS_FILE
    if path.is_file():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
        path.write_text("".join(ln + "\n" for ln in lines))


# ---------------------------------------------------------------- the run


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ElunetError(f"unknown optimizer {cfg.optimizer!r}", hint="use sgd or adamw")


def _subset(data: ImageDataset, n: int, seed: int) -> ImageDataset:
    if not 0 < n <= len(data):
        raise ElunetError(f"--limit-train {n} is outside 1..{len(data)} (the size of the train split)")
    keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return dataclasses.replace(data, images=data.images[keep], targets=data.targets[keep])


def _check_same_classes(card: ModelCard, saved: ModelCard, source: Path) -> None:
    """--data-dir may move on resume; the classes the run learns may not."""
    if (card.labels, card.input_shape) != (saved.labels, saved.input_shape):
        raise ElunetError(
            f"--resume: the data in {source} has classes {card.labels} of shape {card.input_shape}, "
            f"the run was trained on {saved.labels} of shape {saved.input_shape}",
            hint="point --data-dir at the dataset the run was started with",
        )


def train(
    cfg: TrainConfig, resume: bool = False, force: bool = False, log: Callable[[str], None] = print,
    prepare_model: Callable[[nn.Module], None] | None = None, given: Collection[str] | None = None,
) -> Path:
    """Run (or continue) a training run; returns the folder of its last checkpoint.

    ``prepare_model`` is called on the freshly initialised model of a new run (not a resumed one)
    before training; the experiments use it to start every activation of a seed from the same weights.
    ``given``: on --resume, the fields of ``cfg`` the caller chose (see check_resume_config).
    """
    dist = setup_distributed(cfg.device)
    resume_from = _on_main(dist, lambda: check_run_dir(cfg, resume, force))
    resume_weights, saved_state, optimizer_state = load_resume_state(resume_from) if resume_from else (None, {}, None)
    if resume_from:
        cfg = check_resume_config(cfg, saved_state["config"], given)
    out = Path(cfg.out)

    # data
    train_data = load_dataset(cfg.dataset, "train", cfg.data_dir, image_size=cfg.image_size, channels=cfg.channels)
    test_data = load_dataset(cfg.dataset, "test", cfg.data_dir, image_size=cfg.image_size, channels=cfg.channels)
    if cfg.limit_train:
        train_data = _subset(train_data, cfg.limit_train, cfg.seed)
    probe_images = train_data.images[:ACTIVATION_PROBE_IMAGES]

    # model: the same initial weights on every rank (seeded), normalization fitted on the train split
    card = describe_model(
        name=cfg.model_name, architecture=cfg.arch, activation=cfg.activation, alpha=cfg.alpha,
        batch_norm=cfg.bn, dataset=cfg.dataset, labels=train_data.labels, input_shape=train_data.shape,
        normalization=train_data.normalization,
        training={k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUNTIME_FIELDS | {"name"}},
    )
    torch.manual_seed(cfg.seed)
    raw_model = build_model(card, train_data.fit_normalization())
    if prepare_model is not None and not resume_from:
        prepare_model(raw_model)
    if resume_weights is not None:
        _check_same_classes(card, ModelCard.load(resume_from / CARD_FILE), train_data.source)
        load_weights_into(raw_model, resume_weights, resume_from, card)
    raw_model.to(dist.device)
    if cfg.channels_last:
        raw_model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, raw_model)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    model: nn.Module = raw_model
    if dist.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    amp = cfg.amp and dist.device.type == "cuda"
    scaler = grad_scaler(dist.device.type, amp and not torch.cuda.is_bf16_supported(), saved_state.get(GRAD_SCALER_KEY, {}))

    per_rank = len(train_data) // dist.world
    steps_per_epoch = per_rank // cfg.batch_size
    if steps_per_epoch == 0:
        raise ElunetError(f"{per_rank} training images per process is less than one batch of {cfg.batch_size}", hint="lower --batch-size")
    total_steps = cfg.epochs * steps_per_epoch
    lr_at(cfg.schedule, 0, total_steps, cfg.lr)  # an unknown --schedule fails here, before --out is touched
    start_epoch = saved_state.get("epoch", 0)
    step = saved_state.get("step", 0)
    last_good = resume_from
    if dist.is_main:
        if resume_from:
            truncate_metrics(out, start_epoch)
        else:
            clear_run_dir(out)
        n_params = sum(p.numel() for p in raw_model.parameters())
        log(
            f"{card.name}: {cfg.arch}/{cfg.activation}{'' if card.alpha is None else f' alpha={card.alpha}'}{' +bn' if cfg.bn else ''}, "
            f"{n_params / 1e6:.2f}M parameters | {cfg.dataset}: {len(train_data)} train / {len(test_data)} test images from {train_data.source} | "
            f"{dist.device}{f' x{dist.world} processes' if dist.world > 1 else ''}, {cfg.epochs} epochs x {steps_per_epoch} steps of {cfg.batch_size}"
            + (f" | resuming after epoch {start_epoch}" if resume_from else "")
        )

    for epoch in range(start_epoch, cfg.epochs):
        # ---- train one epoch
        shuffle, augmentation = seed_epoch(cfg.seed, epoch, dist.rank)
        order = torch.randperm(len(train_data), generator=shuffle)[dist.rank :: dist.world][: steps_per_epoch * cfg.batch_size]
        model.train()
        loss_sum = torch.zeros((), device=dist.device)
        correct = torch.zeros((), device=dist.device, dtype=torch.long)
        progress = EpochProgress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.batch_size * dist.world, log) if dist.is_main else None
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            lr = lr_at(cfg.schedule, step, total_steps, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            images = train_data.images[idx]
            if cfg.augment:
                images = augment(images, train_data.augmentation, augmentation)
            x = to_input(images, dist.device, cfg.channels_last)
            y = train_data.targets[idx].to(dist.device, non_blocking=True)
            loss, hits = train_step(model, optimizer, x, y, scaler, autocast(dist.device, amp))
            loss_sum += loss
            correct += hits
            step += 1
            if (i + 1) % NAN_CHECK_EVERY == 0 or i + 1 == steps_per_epoch:
                if _any_rank(not math.isfinite(loss_sum.item()), dist):
                    raise TrainingDiverged(
                        f"the training loss became NaN/inf in epoch {epoch + 1} (step {step}); stopped. "
                        + (f"The last good checkpoint is {last_good}" if last_good else "No checkpoint was written yet."),
                        hint="lower --lr, add --bn, or use --schedule with a warm-up (onecycle)",
                    )
            if progress is not None:
                progress.update(i + 1, lambda: loss_sum.item() / (i + 1), lr)
        if progress is not None:
            progress.close()
        seconds = time.perf_counter() - t0
        train_loss, train_acc = loss_sum.item() / steps_per_epoch, correct.item() / (steps_per_epoch * cfg.batch_size)
        if dist.world > 1:
            stats = torch.tensor([train_loss, train_acc], device=dist.device)
            torch.distributed.all_reduce(stats)
            train_loss, train_acc = (stats / dist.world).tolist()

        # ---- evaluate, log and checkpoint (rank 0)
        if dist.is_main:
            test_loss, test_acc = evaluate(raw_model, test_data, dist.device, cfg.channels_last)
            record = {
                "epoch": epoch + 1, "step": step, "lr": lr, "train_loss": round(train_loss, 6), "train_acc": round(train_acc, 6),
                "test_loss": round(test_loss, 6), "test_acc": round(test_acc, 6),
                "images_per_s": round(dist.world * steps_per_epoch * cfg.batch_size / seconds, 1), "epoch_seconds": round(seconds, 2),
                "mean_activation": mean_activations(raw_model, probe_images, dist.device, cfg.channels_last),
            }
            append_metrics(out, record)
            card = card.model_copy(update={"metrics": {"test_acc": test_acc, "test_loss": test_loss, "train_loss": train_loss, "train_acc": train_acc, "epochs": float(epoch + 1)}})
            state = {"epoch": epoch + 1, "step": step, "config": dataclasses.asdict(cfg), GRAD_SCALER_KEY: scaler.state_dict()}
            last_good, card = save_run_checkpoint(out, epoch + 1, raw_model, card, optimizer, state, keep=cfg.keep)
            log(
                f"epoch {epoch + 1:>3}/{cfg.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f} | test loss {test_loss:.4f} "
                f"acc {test_acc:.4f} | lr {lr:.4g} | {record['images_per_s']:.0f} img/s, {seconds:.1f}s"
            )
        _barrier(dist)
    if dist.world > 1:
        torch.distributed.destroy_process_group()
    return resolve_checkpoint(out)
