"""Loading one model version: from its folder to instances that are warm and a batcher in front of them.

In order: card.json and the labels (labels.txt, else the card's), or for a plain
Triton model (no card.json) the opt-in (``--allow-unverified``) and its config.pbtxt;
the engine (``--backend``, ``--device``), what of config.pbtxt elunet does not do
(refused, or logged), an export's parity certificate (unless ``--allow-unverified``),
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
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from elunet.card import CARD_FILE, ModelCard
from elunet.certificate import RunsOn, certificate_problem
from elunet.contracts import WEIGHTS_FILE
from elunet.errors import ElunetError
from elunet.dtypes import BY_NAME, IO_DTYPES
from elunet.model_config import TensorSignature, declared_image_input, differences, model_config_pb2
from elunet.repository import CONFIG_FILE, LABELS_FILE, MODEL_FILES
from elunet.runtime import Engine, Instance, open_engine
from elunet.runtime.choose import Choice, choose_engine
from elunet.serve.batching import DynamicBatcher
from elunet.serve.interface import ModelInterface, card_interface, config_image_input
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
    card_file = served.source.path / CARD_FILE
    card = ModelCard.load(card_file) if card_file.is_file() else None
    if card is not None:
        labels = _card_labels(served, card)
    else:
        _check_plain(served, settings)
    choice = choose_engine(served.source, settings.backend, settings.device)
    if choice.why and settings.backend == "auto":
        log.info("model %s v%d: auto picked %s on %s: %s", served.name, served.version, choice.kind, choice.device, choice.why)
    refused, ignored = unsupported(served.config, choice.device)
    if refused:
        raise ElunetError(f"{CONFIG_FILE} of {served.name} asks for what elunet does not do: " + "; ".join(refused))
    for note in ignored:
        log.warning("model %s v%d: %s: %s", served.name, served.version, CONFIG_FILE, note)
    if card is not None:
        _check_certificate(served, choice, settings.unverified_allowed(served.name))
    engine = served.engine = open_engine(
        choice.kind, choice.path, device=choice.device, cpu_threads=cpu_threads, max_batch_size=served.scheduling.max_batch_size
    )
    # An image model (its config.pbtxt declares encoded image files) decodes them as its card says: an export's only.
    image_files = declared_image_input(served.config) if card is not None else None
    _check_agrees(served, engine, card, image_files)
    served.interface = (card_interface(card, labels, engine.input, engine.output, image_files) if card is not None
                        else _plain_interface(served, engine))
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


def _check_agrees(served: ServedModel, engine: Engine, card: ModelCard | None, image_files: TensorSignature | None) -> None:
    """The model file, its card (an elunet export's) and its config.pbtxt must describe the same model; ``image_files``: the
    input requests carry instead of the model file's, an image model's."""
    s = served.scheduling
    found = []
    if card is not None:
        for kind, actual, dims in (("input", engine.input, tuple(card.input_shape)), ("output", engine.output, (card.num_classes,))):
            if actual.dims != dims:
                found.append(f"the model file's {kind} dims are {list(actual.dims)}, card.json says {list(dims)}")
    if served.config is not None:
        held = [p for p, file in MODEL_FILES.items() if (served.source.path / file).is_file()]
        found += differences(served.config, name=served.name, platforms=held, inputs=[image_files or engine.input],
                             outputs=[engine.output])
    if engine.max_batch_size and s.max_batch_size > engine.max_batch_size:
        if s.source.get("max_batch_size") == "config.pbtxt":
            found.append(f"max_batch_size is {s.max_batch_size}, the model file accepts at most {engine.max_batch_size}")
        else:
            served.scheduling = replace(s, max_batch_size=engine.max_batch_size)
    if found:
        raise ElunetError(f"{CONFIG_FILE}, card.json and the model file of {served.name} disagree: " + "; ".join(found))


def _check_plain(served: ServedModel, settings: ServeSettings) -> None:
    """A version without card.json is a plain Triton model: served only where allowed, and only as its config.pbtxt declares it."""
    if not settings.unverified_allowed(served.name):
        raise ElunetError(
            f"not serving {served.name}: it is a plain Triton model (no {CARD_FILE}, so no parity certificate); start the server "
            f"with --allow-unverified true (every model) or --allow-unverified {served.name} (this one) to serve it unverified"
        )
    config = served.config
    if config is None:
        raise ElunetError(
            f"{served.name} has neither {CARD_FILE} (an elunet export) nor {CONFIG_FILE}: a plain Triton model needs its {CONFIG_FILE} "
            "(elunet does not auto-complete a configuration from the model file)"
        )
    problems = []
    if len(config.input) != 1 or len(config.output) != 1:
        problems.append(f"it declares {len(config.input)} input(s) and {len(config.output)} output(s); elunet serves exactly one of each, "
                        "and needs them declared (it does not auto-complete them from the model file)")
    if config.max_batch_size == 0:
        problems.append("max_batch_size is 0 (no batch axis), which elunet does not serve: it batches every model; give the model "
                        "file a batch axis as its first (dynamic) dimension and set max_batch_size >= 1")
    if problems:
        raise ElunetError(f"{CONFIG_FILE} of plain Triton model {served.name}: " + "; ".join(problems))
    served.parity = "unverified"
    log.warning("model %s v%d is a plain Triton model, served unverified (--allow-unverified)", served.name, served.version)


def _plain_interface(served: ServedModel, engine: Engine) -> ModelInterface:
    """A plain Triton model as its config.pbtxt declares it (which agrees with the model file: _check_agrees)."""
    pb2 = model_config_pb2()
    declared_input, declared_output = served.config.input[0], served.config.output[0]
    tensors = []
    for declared, actual in ((declared_input, engine.input), (declared_output, engine.output)):
        dims = tuple(d if d != -1 else m for d, m in zip(declared.dims, actual.dims))
        if -1 in dims:
            raise ElunetError(f"{CONFIG_FILE} of {served.name}: {declared.name!r} has variable dims {list(dims)} (without the batch axis); "
                              "elunet batches tensors of one shape: declare fixed dims")
        tensors.append(replace(actual, dims=dims))
    model_input, model_output = tensors
    if model_input.datatype not in {BY_NAME[d].v2 for d in IO_DTYPES}:
        raise ElunetError(f"{CONFIG_FILE} of {served.name}: input {model_input.name!r} is TYPE_{model_input.datatype}; elunet serves models "
                          f"whose input is {' or '.join(BY_NAME[d].triton for d in IO_DTYPES)} (pixels in [0, 1])")
    labels = _label_file(served, declared_output.label_filename)
    classes = math.prod(model_output.dims)
    if labels and len(labels) != classes:
        raise ElunetError(f"{CONFIG_FILE} of {served.name}: label_filename {declared_output.label_filename} has {len(labels)} lines, "
                          f"output {model_output.name!r} has {classes} classes", hint="one label per line, line i naming class i")
    image = config_image_input(pb2.ModelInput.Format.Name(declared_input.format), model_input.dims)
    return ModelInterface(model_input, model_output, tuple(labels), image)


def _label_file(served: ServedModel, name: str) -> list[str]:
    """The lines of an output's label_filename, a file of the model folder as Triton reads it; none without one."""
    if not name:
        return []
    path = served.source.path.parent / name
    if Path(name).name != name or name in (".", ".."):
        raise ElunetError(f"{CONFIG_FILE} of {served.name}: label_filename {name!r} must name a file in the model folder (no path)")
    if not path.is_file():
        raise ElunetError(f"{CONFIG_FILE} of {served.name}: label_filename {name} does not exist in the model folder")
    return path.read_text().splitlines()
