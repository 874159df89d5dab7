"""Weights by collective broadcast (`learner.weight_sync: collective`): the learner is rank
0 of a torch.distributed group whose other ranks are the generators, and each broadcast's
tensors (in the engine's dtype) go to all of them at once, packed into buckets of
`learner.sync_bucket_mb`, instead of as one safetensors blob per generator through Ray's
object store. What OpenRLHF and verl do between the learner and the vLLM workers.

The backend (`learner.sync_backend`, `pick_backend`): gloo moves host tensors over TCP;
NCCL (auto's choice when the learner trains on a GPU) moves each bucket GPU to GPU
(NVLink, InfiniBand), the same protocol with the buffers on the device. A receiver stages
NCCL's buckets in host memory as they arrive: the engine beside it has reserved most of its
GPU's memory (vLLM's gpu_memory_utilization), so a second copy of the model there could
fail, and the host copy keeps the all-or-nothing load below. NCCL is not testable on this
project's CPU machines: its path differs from gloo's only in the group made (`_group`) and
the device of the buffers, and gloo's runs in the tests.

One group per broadcast, named by its version under a store the learner hosts: a generator
that joins or leaves the pool between broadcasts simply is or is not a rank of the next
one. Receivers stage every bucket before anything reaches an engine, so a broadcast that
fails half-way (a rank dies, a timeout) leaves every engine on the weights it had; the
learner then sends that version through the object store instead.

Only tensors cross the wire (raw bytes, reinterpreted by the manifest's dtype and shape),
never pickles. The store and gloo's connections listen on `host` alone (127.0.0.1 for a
local run), not on every interface."""

from __future__ import annotations

import datetime
import math
import os
import socket

import torch
import torch.distributed as dist

ROOT = 0  # the learner's rank
DTYPES = ("float32", "bfloat16", "float16", "float64", "int64", "int32", "uint8")  # what a manifest may name


def manifest(tensors: dict[str, torch.Tensor]) -> list[list]:
    """[[name, dtype, shape], ...] in name order: what a receiver allocates, in the order
    the sender packs."""
    return [[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in sorted(tensors.items())]


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"weight sync: a manifest names dtype {name!r}; one of {', '.join(DTYPES)} expected")
    return getattr(torch, name)


def entry_bytes(entry: list) -> int:
    _, dtype, shape = entry
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"weight sync: a manifest gives {entry[0]!r} the shape {shape!r}")
    return math.prod(shape) * dtype_of(dtype).itemsize


def buckets(entries: list[list], bucket_bytes: int) -> list[list[int]]:
    """Indices of `entries` grouped in order into buckets of at most `bucket_bytes` (a
    tensor larger than that travels alone): one broadcast call per bucket."""
    if bucket_bytes <= 0:
        raise ValueError(f"buckets: bucket_bytes must be > 0, got {bucket_bytes}")
    plan: list[list[int]] = []
    size = 0
    for i, entry in enumerate(entries):
        n = entry_bytes(entry)
        if not plan or size + n > bucket_bytes:
            plan.append([])
            size = 0
        plan[-1].append(i)
        size += n
    return plan


def pick_backend(requested: str, device: torch.device) -> str:
    """The broadcast's backend for `learner.sync_backend` = `requested` on a learner that
    trains on `device`: auto is NCCL on a GPU, else gloo. NCCL sends from a GPU, with a
    torch built with it; asked for otherwise, a one-line error."""
    if requested == "auto":
        requested = "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl":
        if device.type != "cuda":
            raise ValueError(
                f"learner.sync_backend: nccl sends from a GPU, but the learner trains on {device}"
            )
        if not dist.is_nccl_available():
            raise ValueError("learner.sync_backend: nccl, but this torch is built without NCCL")
    elif requested != "gloo":
        raise ValueError(f"learner.sync_backend: auto, gloo or nccl, got {requested!r}")
    return requested


def device_of(backend: str, device: torch.device | None = None) -> torch.device:
    """Where a backend's buffers live: gloo's in host memory; NCCL's on `device` (the
    learner's GPU, cuda:N outside Ray) or else the process's current GPU (under Ray, an
    actor's one GPU is cuda:0)."""
    if backend != "nccl":
        return torch.device("cpu")
    if device is not None and device.type == "cuda" and device.index is not None:
        return device
    return torch.device("cuda", torch.cuda.current_device())


def local_address(host: str) -> str:
    """This machine's address on the way to `host` (`host` itself where it is this
    machine's, loopback included): what a rank's gloo device binds to. A receiver on another
    node bound to the learner's address, which gloo refuses ("Cannot resolve ... to a
    (local) address"), so every gloo broadcast across nodes fell back after its timeout."""
    family, _, _, _, address = socket.getaddrinfo(host, 9, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address)  # UDP: picks the route and its source address, sends nothing
        return probe.getsockname()[0]


def gloo_options(host: str, timeout_s: float):
    """A gloo group's options: its connections on `host` alone, and its timeout."""
    opts = dist.ProcessGroupGloo._Options()
    opts._timeout = datetime.timedelta(seconds=timeout_s)
    opts._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    return opts


def store(host: str, port: int, master: bool, timeout_s: float) -> dist.TCPStore:
    """A TCP store at host:port: the master listens on `host` alone (a socket bound there,
    handed to the store), a client connects to it."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if not master:
        return dist.TCPStore(host, port, is_master=False, timeout=timeout, use_libuv=True)
    listener = socket.create_server((host, port))
    return dist.TCPStore(
        host,
        listener.getsockname()[1],
        is_master=True,
        wait_for_workers=False,
        timeout=timeout,
        master_listen_fd=listener.detach(),  # the store owns the socket from here
        use_libuv=True,
    )


# NCCL's error handling, read when a group is made: a broadcast that fails (a rank gone, a
# timeout) raises from wait() as gloo's does, and only its communicator is aborted, instead
# of NCCL's watchdog tearing the whole process down (torch's default)
NCCL_ENV = {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}


def _group(store, prefix: str, rank: int, world: int, host: str, timeout_s: float, backend: str = "gloo"):
    """This broadcast's group: gloo's connections on this rank's address on the way to
    `host` (`host` itself on its own machine: local_address); NCCL's with NCCL_ENV
    (set only while the group is made, so the process's other groups keep their own)."""
    store = dist.PrefixStore(prefix, store)
    if backend == "gloo":  # each rank's device on its own address on the way to `host`
        return dist.ProcessGroupGloo(store, rank, world, gloo_options(local_address(host), timeout_s))
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = datetime.timedelta(seconds=timeout_s)
    saved = {k: os.environ.get(k) for k in NCCL_ENV}
    os.environ.update(NCCL_ENV)
    try:
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def _close(group, backend: str, failed: bool) -> None:
    """Free an NCCL group's communicator now (its GPU buffers), aborted after a failure; a
    gloo group goes with its last reference."""
    if backend != "nccl":
        return
    if failed:
        group.abort()
    else:
        group.shutdown()


def _broadcast(group, buffer: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = ROOT
    group.broadcast([buffer], opts).wait()


class Rendezvous:
    """The learner's side: a TCP store on a socket bound to `host` (a free port), where each
    broadcast's group (of `backend`) meets. `address` is what receivers are told."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        timeout_s: float = 30.0,
        backend: str = "gloo",
        device: torch.device | None = None,
    ):
        self.host, self.timeout_s, self.backend = host, timeout_s, backend
        self.device = device_of(backend, device)  # the sender's buffers: the learner's GPU for NCCL
        self.store = store(host, 0, True, timeout_s)  # a free port, on `host` only
        self.port = self.store.port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def send(self, prefix: str, world: int, tensors: dict[str, torch.Tensor], plan: list[list[int]]) -> int:
        """Broadcast `tensors` (packed by `plan`, over `manifest(tensors)`) as rank 0 of a
        new group of `world` ranks under `prefix`; returns the bytes sent. Raises when any
        rank fails to join or to take a bucket within the timeout."""
        group = _group(self.store, prefix, ROOT, world, self.host, self.timeout_s, self.backend)
        names = sorted(tensors)
        sent = 0
        failed = True
        try:
            for bucket in plan:
                parts = [
                    tensors[names[i]].detach().contiguous().reshape(-1).view(torch.uint8) for i in bucket
                ]
                buffer = torch.cat(parts) if len(parts) > 1 else parts[0]
                _broadcast(group, buffer.to(self.device))  # exported on the host: NCCL's copy goes up
                sent += buffer.numel()
            failed = False
        finally:
            _close(group, self.backend, failed)
        return sent

    def close(self) -> None:
        self.store = None  # its server and socket go with it


def receive(
    address: str,
    prefix: str,
    rank: int,
    world: int,
    entries: list[list],
    plan: list[list[int]],
    timeout_s: float,
    backend: str = "gloo",
) -> dict[str, torch.Tensor]:
    """A receiver's side: join the group (of `backend`) under `prefix` at `address` as
    `rank` and take every bucket; returns the tensors (named by `entries`, in host memory)
    only once all arrived."""
    host, port = address.rsplit(":", 1)
    group = _group(store(host, int(port), False, timeout_s), prefix, rank, world, host, timeout_s, backend)
    device = device_of(backend)
    tensors = {}
    failed = True
    try:
        for bucket in plan:
            sizes = [entry_bytes(entries[i]) for i in bucket]
            buffer = torch.empty(sum(sizes), dtype=torch.uint8, device=device)
            _broadcast(group, buffer)
            buffer = buffer.cpu()  # staged on the host (see the module); gloo's already is
            offset = 0
            for i, n in zip(bucket, sizes):
                name, dtype, shape = entries[i]
                tensors[name] = buffer[offset : offset + n].view(dtype_of(dtype)).reshape(shape)
                offset += n
        failed = False
    finally:
        _close(group, backend, failed)
    return tensors
