"""How one model version is scheduled: its config.pbtxt as Triton reads it, the server's settings for a model
folder without one.

A model with a config.pbtxt is scheduled by it alone, with Triton's meaning of 0 and absent (protobuf
reads an absent field as 0):

| config.pbtxt                                          | absent or 0 means (as in Triton)           |
|-------------------------------------------------------|--------------------------------------------|
| dynamic_batching                                      | absent: no batching (each request a batch) |
| dynamic_batching.max_queue_delay_microseconds         | no delay: a batch leaves when an instance is free |
| dynamic_batching.default_queue_policy.max_queue_size  | no limit                                   |
| ...default_queue_policy.default_timeout_microseconds  | no timeout                                 |

A model folder without a config.pbtxt is scheduled by the server's options (or their environment
variables, or the settings file): dynamic batching with --max-queue-delay-ms, --max-queue-size
and --request-timeout-s. Two settings are not Triton's to decide this way, and fall back to the
server's for a model whose config.pbtxt leaves them unset:

| config.pbtxt                                          | server setting         |
|-------------------------------------------------------|------------------------|
| max_batch_size                                        | --max-batch-size       |
| instance_group count (summed over groups)             | --instances            |

With neither (``--instances 0``, the default) the count is elunet's choice,
made when the version warms up (``Scheduling.with_auto_instances``): on CPUs the server's
event loop, which parses every request, competes with the instances for the
cores, so a model that one instance computes faster than the loop takes
requests in serves faster with one instance than with two.

A config.pbtxt field elunet cannot honour is never ignored silently (``unsupported``): a model that needs
it (a GPU instance group on a server without a GPU) does not load and says why; one whose field only
tunes Triton (priorities, response ordering, rate limits, the response cache) loads, and the server logs
once per load what it does not do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

from elunet.runtime.cpus import threads_per_instance
from elunet.serve.settings import AUTO_INSTANCES, ServeSettings

# The most instances an automatic count chooses; the CPU threads are shared out for it before the count is known.
AUTO_MAX_INSTANCES = 2
# An automatic count is one instance for a model that computes an image in less CPU time than this at its
# largest batch, else two. It is about what the event loop spends on a V2 JSON request of one small image:
# a model faster than that keeps up with the loop on one instance, and a second one only takes the loop's
# CPU; a slower one gains from the second. benchmarks/serve_defaults.py measures both counts per model.
ONE_INSTANCE_BELOW_S_PER_IMAGE = 200e-6


@dataclass(frozen=True)
class Scheduling:
    max_batch_size: int
    dynamic: bool
    max_queue_delay_s: float
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int  # requests; 0: no limit
    timeout_s: float | None  # None: no limit
    allow_timeout_override: bool
    instances: int
    #: setting -> "config.pbtxt", "server" or (instances chosen at warm-up) "auto", for the log line
    source: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def automatic(self) -> bool:
        """Whether the count is still elunet's to choose (neither config.pbtxt nor --instances set one)."""
        return self.instances == AUTO_INSTANCES

    @property
    def planned_instances(self) -> int:
        """The instances to share the CPU threads out for: the count, or the most an automatic one may be."""
        return self.instances or AUTO_MAX_INSTANCES

    def with_auto_instances(self, cpu_s_per_image: float) -> "Scheduling":
        """The count chosen for a model whose image costs ``cpu_s_per_image`` of CPU time at its largest batch."""
        count = 1 if cpu_s_per_image < ONE_INSTANCE_BELOW_S_PER_IMAGE else AUTO_MAX_INSTANCES
        return replace(self, instances=count, source={**self.source, "instances": "auto"})

    def describe(self) -> str:
        parts = [
            f"max batch {self.max_batch_size}",
            f"delay {self.max_queue_delay_s * 1000:g} ms" if self.dynamic else "no dynamic batching",
            f"preferred {list(self.preferred_batch_sizes)}" if self.preferred_batch_sizes else "",
            f"queue {self.max_queue_size or 'unbounded'}",
            f"timeout {self.timeout_s:g} s" if self.timeout_s else "no timeout",
            f"{self.instances} instance(s)" + (" (auto)" if self.source.get("instances") == "auto" else ""),
        ]
        from_config = sorted(k for k, v in self.source.items() if v == "config.pbtxt")
        return ", ".join(p for p in parts if p) + (f" (from config.pbtxt: {', '.join(from_config)})" if from_config else "")


def scheduling(config, settings: ServeSettings) -> Scheduling:
    """The scheduling of a model whose parsed config.pbtxt is ``config`` (None: it has none)."""
    if config is None:
        return Scheduling(
            max_batch_size=settings.max_batch_size,
            dynamic=True,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000,
            preferred_batch_sizes=(),
            max_queue_size=settings.max_queue_size,
            timeout_s=settings.request_timeout_s,
            allow_timeout_override=True,
            instances=settings.instances,
            source=dict.fromkeys(("max_batch_size", "max_queue_delay", "max_queue_size", "timeout", "instances"), "server"),
        )
    batching = config.dynamic_batching if config.HasField("dynamic_batching") else None
    policy = batching.default_queue_policy if batching is not None and batching.HasField("default_queue_policy") else None
    source = dict.fromkeys(("max_queue_delay", "max_queue_size", "timeout"), "config.pbtxt")

    def pick(name: str, configured, default):
        source[name] = "config.pbtxt" if configured else "server"
        return configured if configured else default

    return Scheduling(
        max_batch_size=pick("max_batch_size", config.max_batch_size, settings.max_batch_size),
        dynamic=batching is not None,
        max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6 if batching is not None else 0.0,
        preferred_batch_sizes=tuple(batching.preferred_batch_size) if batching is not None else (),
        max_queue_size=policy.max_queue_size if policy else 0,
        timeout_s=policy.default_timeout_microseconds / 1e6 if policy and policy.default_timeout_microseconds else None,
        allow_timeout_override=policy.allow_timeout_override if policy else True,
        instances=pick("instances", sum(group.count or 1 for group in config.instance_group), settings.instances),
        source=source,
    )


def cpu_threads_per_instance(settings: ServeSettings, planned: Iterable[Scheduling]) -> int:
    """Intra-op threads for each instance: ``--cpu-threads``, else an equal share of the CPUs for every
    instance ``planned`` (an automatic count at its most: the share is fixed before the count is known)."""
    return settings.cpu_threads or threads_per_instance(sum(s.planned_instances for s in planned))


def unsupported(config, device: str) -> tuple[list[str], list[str]]:
    """(why the model cannot load, what of its config.pbtxt is not done) for ``config`` served on ``device``.

    The first list is of fields that change what a model computes or where: serving it anyway would
    answer something else than Triton does. The second only tunes Triton's scheduler: the model serves
    the same answers, and the server says once per load what it leaves out."""
    if config is None:
        return [], []
    pb2 = type(config)
    group_kind = pb2.DESCRIPTOR.fields_by_name["instance_group"].message_type.enum_types_by_name["Kind"]
    refused, ignored = [], []
    if config.HasField("sequence_batching"):
        refused.append("sequence_batching: elunet has no sequence batcher (its models are stateless)")
    if config.HasField("ensemble_scheduling"):
        refused.append("ensemble_scheduling: elunet serves no ensembles")
    if config.model_transaction_policy.decoupled:
        refused.append("model_transaction_policy.decoupled: elunet answers each request with one response")
    for group in config.instance_group:
        kind = group_kind.values_by_number[group.kind].name
        if kind == "KIND_GPU" and not device.startswith("cuda"):
            refused.append(f"instance_group {group.name or '(unnamed)'} is {kind}, and this server computes on {device} "
                           "(serve it on a GPU with --device cuda, or set kind: KIND_CPU)")
        elif kind == "KIND_CPU" and device != "cpu":
            ignored.append(f"instance_group {group.name or '(unnamed)'} is KIND_CPU: its instances compute on {device} "
                           "(--device decides where every instance computes)")
        if group.HasField("rate_limiter"):
            ignored.append(f"instance_group {group.name or '(unnamed)'} rate_limiter: elunet has no rate limiter; instances "
                           "take batches whenever they are free")
    batching = config.dynamic_batching
    if batching.priority_levels or batching.priority_queue_policy:
        ignored.append("dynamic_batching priority levels: elunet has one queue, first come first served; a request's "
                       "priority is not read")
    if batching.preserve_ordering:
        ignored.append("dynamic_batching.preserve_ordering: each request is answered when its batch is done, which may be "
                       "before the answer of an earlier request on another instance")
    timeout_action = batching.default_queue_policy.DESCRIPTOR.fields_by_name["timeout_action"].enum_type
    if timeout_action.values_by_number[batching.default_queue_policy.timeout_action].name == "DELAY":
        ignored.append("default_queue_policy.timeout_action DELAY: a request past its timeout is rejected (504), as with REJECT")
    if config.response_cache.enable:
        ignored.append("response_cache: elunet has no response cache; every request is computed (cache_hit and "
                       "cache_miss stay 0)")
    return refused, ignored
