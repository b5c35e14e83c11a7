"""How many CPUs this process may really use, and each instance's share of them.

``os.cpu_count()`` counts the host's cores; a container limited by a cgroup
CPU quota, or a process pinned with taskset, may use fewer. Oversubscribing
them collapses throughput: the threads of one inference wait for each other
while the CPUs they need run someone else's.
"""

from __future__ import annotations

import math
import os
import platform
import threading
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
# The x86 instructions ONNX Runtime's int8 kernels choose between, in /proc/cpuinfo's spelling: int8 gains
# differ by far with them (VNNI's one-instruction int8 dot product, or AVX2's two with 16-bit saturation).
INT8_FLAGS = ("avx2", "avx512f", "avx_vnni", "avx512_vnni", "amx_int8")
# How far below the server's event loop its workers run: decoding pools and inference threads.
WORKER_NICE = 10


def lower_priority() -> None:
    """Run the calling worker (a process, or on Linux a thread) at nice +WORKER_NICE, so that on a busy
    host the event loop, which parses requests and answers probes, gets a CPU first."""
    try:
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + WORKER_NICE))
    except (AttributeError, OSError):  # not Linux, or not permitted: run at the same priority
        pass


def available_cpus(cgroup_root: Path = CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 or v1 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def _cgroup_quota(root: Path) -> float | None:
    """The CPU quota in CPUs (quota / period), or None when unlimited or unknown."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = root / "cpu" / "cpu.cfs_quota_us"
        if v1.is_file():
            quota = int(v1.read_text())
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def threads_per_instance(instances: int, cpus: int | None = None) -> int:
    """Each of ``instances`` (all models together) gets an equal share of the CPUs, at least one thread."""
    return max(1, (cpus or available_cpus()) // max(1, instances))


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model and its int8-relevant instructions, e.g. "AMD EPYC (avx2; no VNNI)": benchmark
    figures, int8 ones above all, belong to the CPU they were measured on."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in text.splitlines()[:64] if ":" in line)}
    flags = set(fields.get("flags", "").split())
    found = [f for f in INT8_FLAGS if f in flags]
    vnni = "" if {"avx_vnni", "avx512_vnni"} & flags else "; no VNNI"
    return f"{fields.get('model name', platform.machine())} ({', '.join(found) or 'no AVX2'}{vnni})"
