"""Triton's system shared-memory extension: regions of a client's POSIX shared-memory objects that infer
requests read inputs from and write outputs into, instead of carrying the bytes.

A client creates an object with shm_open (tritonclient.utils.shared_memory's create_shared_memory_region:
key "/name", the file /dev/shm/name), registers a region of it (key, offset, byte_size) under a name, and
names that region in a tensor's parameters ``shared_memory_region``, ``shared_memory_byte_size`` and
optionally ``shared_memory_offset`` (within the region). Every offset and size is checked against the region,
and the region against the object's current size, before a byte is read or written: a bad region is a 400,
never an out-of-bounds access (mmap past an object's end is a SIGBUS, so a client that shrinks its object
after registering gets a 400 too).

A request leases the regions it uses until it is answered. Unregistering removes a region at once for new
requests, and unmaps it when its last lease ends: a request under way still reads and writes its memory.

CUDA shared memory needs a GPU build: registering a CUDA region is refused as unsupported (HTTP 400, gRPC
UNIMPLEMENTED, as Triton answers an unsupported request); its status and unregister answer as an empty
manager, since perf_analyzer's clean-up unregisters both kinds.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from elunet.serve.errors import ServeError, bad_request, not_found, shown

# The tensor parameters of the extension, by Triton's names.
REGION, BYTE_SIZE, OFFSET = "shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"
# Where Linux keeps POSIX shared-memory objects: shm_open("/name") is this folder's file "name".
SHM_ROOT = Path("/dev/shm")
# ServeError reason of a request for something this build cannot do; gRPC answers it UNIMPLEMENTED.
UNSUPPORTED = "unsupported"


def cuda_unsupported() -> ServeError:
    return ServeError(400, "CUDA shared memory is not supported by this server (its regions need a GPU build with CUDA IPC); "
                      "use system shared memory (/v2/systemsharedmemory) or send the tensors in the request", reason=UNSUPPORTED)


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    _fd: int = field(repr=False)
    _mapping: mmap.mmap = field(repr=False)
    _leases: int = 0
    _unregistered: bool = False

    def _span(self, parameters: dict, what: str) -> tuple[int, int]:
        """(start in the mapping, byte size) that a tensor's parameters name; 400 unless inside the region and the object."""
        size, offset = _count(parameters, BYTE_SIZE, what, None), _count(parameters, OFFSET, what, 0)
        if offset + size > self.byte_size:
            raise bad_request(f"{what}: {OFFSET} {offset} + {BYTE_SIZE} {size} = {offset + size} bytes runs past the end of shared memory "
                              f"region {self.name!r}, which holds {self.byte_size} bytes")
        start = self.offset + offset
        now = os.fstat(self._fd).st_size
        if start + size > now:
            raise bad_request(f"{what}: shared memory object {self.key!r} now holds {now} bytes, fewer than region {self.name!r} was "
                              f"registered with ({self.offset + self.byte_size}): it was truncated; register it again")
        return start, size

    def _close(self) -> None:
        self._mapping.close()
        os.close(self._fd)


def _count(parameters: dict, name: str, what: str, default: int | None) -> int:
    value = parameters.get(name, default)
    if value is None:
        raise bad_request(f"{what} is in shared memory region {parameters[REGION]!r} but has no {name} parameter; send its size in bytes")
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise bad_request(f"{what}: the {name} parameter must be a non-negative integer, got {shown(value)}")
    return value


class SharedMemory:
    """The system shared-memory regions registered with this server, by name."""

    def __init__(self):
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()  # an input is read (its region leased) in a decoding thread, the rest on the event loop

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise bad_request("a shared memory region needs a name")
        if not key.startswith("/") or "/" in key[1:] or "\0" in key or key in ("/", "/.", "/.."):
            raise bad_request(f"key {shown(key)} is not a POSIX shared memory name: expected '/' and a name without '/', as shm_open takes")
        if offset < 0 or byte_size <= 0:
            raise bad_request(f"a region needs offset >= 0 and byte_size > 0, got offset {offset}, byte_size {byte_size}")
        if name in self._regions:
            raise bad_request(f"shared memory region {name!r} is already registered (key {self._regions[name].key!r}): unregister it first")
        path = SHM_ROOT / key[1:]
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise bad_request(f"no shared memory object {key!r} ({path} does not exist): create it with shm_open first") from None
        except OSError as exc:
            raise bad_request(f"shared memory object {key!r} cannot be opened for reading and writing: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise bad_request(f"shared memory object {key!r} holds {size} bytes; offset {offset} + byte_size {byte_size} = "
                                  f"{offset + byte_size} runs past its end")
            mapping = mmap.mmap(fd, offset + byte_size)  # from 0: an mmap offset must be page-aligned, a region's need not be
        except BaseException:
            os.close(fd)
            raise
        self._regions[name] = Region(name, key, offset, byte_size, fd, mapping)

    def unregister(self, name: str | None) -> None:
        """Unregister one region (no error when it is not registered, as Triton), or every one for None."""
        with self._lock:
            for region in [self._regions.pop(name, None)] if name else [self._regions.pop(n) for n in list(self._regions)]:
                if region is not None:
                    region._unregistered = True
                    if region._leases == 0:
                        region._close()

    def status(self, name: str | None) -> list[Region]:
        if name:
            if name not in self._regions:
                raise not_found(f"no system shared memory region {name!r} is registered")
            return [self._regions[name]]
        return list(self._regions.values())

    def lease(self) -> Lease:
        return Lease(self)


class Lease:
    """The regions one request uses, kept mapped until ``release`` (the request answered)."""

    def __init__(self, memory: SharedMemory):
        self._memory = memory
        self._held: list[Region] = []

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        with self._memory._lock:
            for region in self._held:
                region._leases -= 1
                if region._unregistered and region._leases == 0:
                    region._close()
        self._held.clear()

    def _region(self, parameters: dict, what: str) -> Region:
        name = parameters[REGION]
        if not isinstance(name, str):
            raise bad_request(f"{what}: the {REGION} parameter must be a region's name (a string), got {shown(name)}")
        with self._memory._lock:
            # A region this request holds stays its own, unregistered or not (its input was read from it).
            region = next((r for r in self._held if r.name == name), None) or self._memory._regions.get(name)
            if region is None:
                raise bad_request(f"{what} names shared memory region {name!r}, which is not registered "
                                  "(POST /v2/systemsharedmemory/region/{name}/register first)")
            if region not in self._held:
                region._leases += 1
                self._held.append(region)
        return region

    def input_values(self, parameters: dict, what: str, dtype: np.dtype, shape: list[int]) -> np.ndarray:
        """The elements of an input tensor in shared memory (copied out); 400 when the parameters do not fit."""
        region = self._region(parameters, what)
        start, size = region._span(parameters, what)
        needed = math.prod(shape) * dtype.itemsize
        if size != needed:
            raise bad_request(f"{what} has {BYTE_SIZE} {size}; its shape {list(shape)} of {dtype.name} takes {needed} bytes")
        return np.frombuffer(region._mapping[start:start + size], dtype=dtype)

    def write(self, parameters: dict, what: str, data: bytes) -> None:
        """Write an output tensor's bytes into the region its parameters name (the answer then names the output
        with its datatype and shape only, as Triton's)."""
        region = self._region(parameters, what)
        start, size = region._span(parameters, what)
        if len(data) > size:
            raise bad_request(f"{what} takes {len(data)} bytes, more than its {BYTE_SIZE} {size} in shared memory region {region.name!r}")
        region._mapping[start:start + len(data)] = data


def in_shared_memory(parameters: dict, carried_too: bool, what: str) -> bool:
    """Whether a tensor's parameters put it in a shared memory region; 400 when the request also carries its data."""
    if REGION not in parameters:
        return False
    if carried_too:
        raise bad_request(f"{what} is both in shared memory region {parameters[REGION]!r} and carried in the request; send one")
    return True
