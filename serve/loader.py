"""Loading one model version: from its folder to instances that are warm and a batcher in front of them.

In order: card.json and the labels (labels.txt, else the card's), the engine
(``--backend``, ``--device``), what of config.pbtxt elunet does not do (refused, or
logged), its parity certificate (unless ``--allow-unverified``),
the agreement of the model file with card.json and config.pbtxt, the description
of what the version serves (serve/interface.py), the first instance warmed up (and
config.pbtxt's model_warmup samples run on each), the automatic instance count
measured on it (where neither config.pbtxt nor ``--instances`` sets one), the
other instances warmed up, and last the batcher. The registry
(serve/registry.py) decides when a version loads and whether it serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from elunet.card import CARD_FILE, ModelCard
from elunet.certificate import RunsOn, certificate_problem
from elunet.contracts import WEIGHTS_FILE
from elunet.errors import ElunetError
from elunet.model_config import declared_image_input, differences
from elunet.repository import CONFIG_FILE, LABELS_FILE, MODEL_FILES
from elunet.runtime import Engine, Instance, open_engine
from elunet.runtime.choose import Choice, choose_engine
from elunet.serve.batching import DynamicBatcher
from elunet.serve.interface import card_interface
from elunet.serve.scheduling import unsupported
from elunet.serve.settings import ServeSettings
from elunet.serve.warmup import warmup_samples

if TYPE_CHECKING:
    from elunet.serve.registry import ServedModel

log = logging.getLogger("elunet.serve")


async def load(served: ServedModel, settings: ServeSettings, cpu_threads: int) -> None:
    """Give ``served`` its engine, warm instances and batcher; raises what failed (the registry reports it).

    ``cpu_threads``: intra-op threads of each instance. The opening and warming up run in a thread, so that
    the server answers meanwhile.
    """
    await asyncio.to_thread(_open_and_warm_up, served, settings, cpu_threads)
    s = served.scheduling
    served.batcher = DynamicBatcher(
        served.instances,
        max_batch_size=s.max_batch_size,
        max_queue_delay_s=s.max_queue_delay_s,
        max_queue_size=s.max_queue_size,
        preferred_batch_sizes=s.preferred_batch_sizes,
        dynamic=s.dynamic,
        observer=served.metrics,
        name=f"{served.name}-{served.version}",
    )
    served.metrics.scheduled(s)


def _open_and_warm_up(served: ServedModel, settings: ServeSettings, cpu_threads: int) -> None:
    started = time.perf_counter()
    card = ModelCard.load(served.source.path / CARD_FILE)
    labels = _card_labels(served, card)
    choice = choose_engine(served.source, settings.backend, settings.device)
    if choice.why and settings.backend == "auto":
        log.info("model %s v%d: auto picked %s on %s: %s", served.name, served.version, choice.kind, choice.device, choice.why)
    refused, ignored = unsupported(served.config, choice.device)
    if refused:
        raise ElunetError(f"{CONFIG_FILE} of {served.name} asks for what elunet does not do: " + "; ".join(refused))
    for note in ignored:
        log.warning("model %s v%d: %s: %s", served.name, served.version, CONFIG_FILE, note)
    _check_certificate(served, choice, settings.allow_unverified)
    engine = served.engine = open_engine(
        choice.kind, choice.path, device=choice.device, cpu_threads=cpu_threads, max_batch_size=served.scheduling.max_batch_size
    )
    _check_agrees(served, engine, card)
    served.interface = card_interface(card, labels, engine.input, engine.output, image_files=declared_image_input(served.config))
    samples = warmup_samples(served.config, served.source.path.parent, served.interface.input)
    served.instances = [_warmed_up(served, engine.create_instance(), samples)]
    if served.scheduling.automatic:
        per_image = _s_per_image(served, served.instances[0], cpu_threads)
        served.scheduling = served.scheduling.with_auto_instances(per_image)
        log.info("model %s v%d: %.0f us of %s per image at batch %d: %d instance(s)", served.name, served.version, per_image * 1e6,
                 "CPU time" if served.engine.device == "cpu" else "wall time", served.max_batch_size, served.scheduling.instances)
    served.instances += [_warmed_up(served, engine.create_instance(), samples) for _ in range(1, served.scheduling.instances)]
    log.info("model %s v%d: %d instance(s) warmed up in %.2f s", served.name, served.version, len(served.instances), time.perf_counter() - started)


def _card_labels(served: ServedModel, card: ModelCard) -> list[str]:
    """An elunet export's labels: labels.txt (Triton's label_filename, as export writes it), else the card's."""
    labels_file = served.source.path.parent / LABELS_FILE
    labels = labels_file.read_text().splitlines() if labels_file.is_file() else list(card.labels)
    if len(labels) != card.num_classes:
        raise ElunetError(f"{LABELS_FILE} has {len(labels)} lines, the model has {card.num_classes} classes",
                          hint="one label per line, line i naming class i (elunet export writes it)")
    return labels


def _warmed_up(served: ServedModel, instance: Instance, samples: list[tuple[str, np.ndarray, int]]) -> Instance:
    """Run the largest and the smallest batch: allocators, kernel selection and lazy initialisation
    happen here instead of in the first users' requests; then config.pbtxt's model_warmup samples."""
    for name, batch, times in samples:
        for _ in range(times):
            instance.infer(batch)
        log.info("model %s v%d: instance %d ran warm-up sample %s (batch %d) %d time(s)", served.name, served.version,
                 instance.index, name or "(unnamed)", len(batch), times)
    interface = served.interface
    for n in sorted({served.max_batch_size, 1}, reverse=True):
        logits = instance.infer(np.zeros((n, *interface.input.dims), np.float32))
        if logits.shape != (n, *interface.output.dims):
            raise ElunetError(
                f"warm-up of {served.name} v{served.version}: output {interface.output.name!r} has shape {list(logits.shape)}, "
                f"expected {[n, *interface.output.dims]}",
                hint="the model file computes another shape than it declares (and its card.json or config.pbtxt says)",
            )
    return instance


def _s_per_image(served: ServedModel, instance: Instance, cpu_threads: int) -> float:
    """Time per image at the largest batch, warm, the best of three; on a CPU engine, CPU time.

    Two clocks, each of which overcounts in its own situation, and the smaller one: this process's
    CPU time (the intra-op threads' together) also counts the event loop and other models
    serving traffic meanwhile (a reload under load); the calling thread's own CPU time times the
    intra-op threads is exact with one thread and counts other threads of no kind, but with several,
    on a busy host, the caller computes more than its share. Wall time would count other processes
    too (the decoding pool starting beside the first load). On a GPU, wall time.
    """
    batch = np.zeros((served.max_batch_size, *served.interface.input.dims), np.float32)
    on_cpu = served.engine.device == "cpu"
    best = float("inf")
    for _ in range(3):
        wall, process, thread = time.perf_counter(), time.process_time(), time.thread_time()
        instance.infer(batch)
        took = min(time.process_time() - process, (time.thread_time() - thread) * cpu_threads) if on_cpu else time.perf_counter() - wall
        best = min(best, took)
    return best / served.max_batch_size


def _check_certificate(served: ServedModel, choice: Choice, allow_unverified: bool) -> None:
    """Parity-gated to the end: a version serves only with a passed certificate for what runs, where it runs."""
    path = served.source.path
    labels = path.parent / LABELS_FILE
    if choice.kind == "torch":  # the checkpoint itself runs, the reference: its weights must be those the certificate names
        problem = certificate_problem(path / MODEL_FILES["onnxruntime_onnx"], None, weights_file=path / WEIGHTS_FILE, labels_file=labels)
    else:
        model_file = path / MODEL_FILES["tensorrt_plan" if choice.kind == "tensorrt" else "onnxruntime_onnx"]
        problem = certificate_problem(model_file, RunsOn.of(choice.kind, choice.device), labels_file=labels)
    if problem is None:
        return
    if not allow_unverified:
        raise ElunetError(f"not serving an unverified model: {problem}",
                          hint="export it with `elunet export` (which verifies), run `elunet verify`, or start the server with --allow-unverified true")
    served.parity = "unverified"
    log.warning("model %s v%d is served unverified (--allow-unverified): %s", served.name, served.version, problem)


def _check_agrees(served: ServedModel, engine: Engine, card: ModelCard) -> None:
    """The model file, its card and its config.pbtxt must describe the same model."""
    s = served.scheduling
    found = []
    for kind, actual, dims in (("input", engine.input, tuple(card.input_shape)), ("output", engine.output, (card.num_classes,))):
        if actual.dims != dims:
            found.append(f"the model file's {kind} dims are {list(actual.dims)}, card.json says {list(dims)}")
    if served.config is not None:
        held = [p for p, file in MODEL_FILES.items() if (served.source.path / file).is_file()]
        found += differences(served.config, name=served.name, platforms=held, inputs=[declared_image_input(served.config) or engine.input],
                             outputs=[engine.output])
    if engine.max_batch_size and s.max_batch_size > engine.max_batch_size:
        if s.source.get("max_batch_size") == "config.pbtxt":
            found.append(f"max_batch_size is {s.max_batch_size}, the model file accepts at most {engine.max_batch_size}")
        else:
            served.scheduling = replace(s, max_batch_size=engine.max_batch_size)
    if found:
        raise ElunetError(f"{CONFIG_FILE}, card.json and the model file of {served.name} disagree: " + "; ".join(found))
