"""The learner's peak FLOP/s, what its MFU is read against (`learner.peak_tflops`): a number
from the config, or `auto`, the dense matmul rate of the learner's device in its compute
dtype on its threads, measured once per machine and kept in a JSON cache.

Measured, because no one number fits: 0.9 TFLOP/s bf16 on a 2-core AMX Xeon, 0.15 fp32 on
a 2-core AVX2 EPYC (where bf16 is emulated and the learner computes in fp32), about 1,000
bf16 on an H100/H200; a fixed default misreads MFU by 6x on one and 1,000x on another.
`selfplay run` measures it in a Ray task on the learner's resources before any of the run's
actors start (`measure_for`), so nothing of the run competes for the cores (a CPU learner
on the driver's own one-node Ray: the driver reads a cached figure itself); the plain
Learner class, used without Ray, measures where it stands."""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from pathlib import Path

import torch

from selfplay.device import native_bf16, pick_device
from selfplay.files import write_atomic


def compute_dtype(device: str = "cpu", bf16: bool | str = "auto") -> torch.dtype:
    """What the learner multiplies in on `device` (`learner.bf16`): bf16 autocast when asked
    (True), or (auto) where the device computes bf16 natively (selfplay/device.py:native_bf16);
    fp32 otherwise, the weights' own dtype."""
    return torch.bfloat16 if bf16 is True or (bf16 == "auto" and native_bf16(device)) else torch.float32


def matmul_flops(
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    threads: int | None = None,
    n: int = 2048,
    seconds: float = 2.0,
    windows: int = 4,
) -> float:
    """The machine's measured dense matmul rate (FLOP/s): square products for about two
    seconds after a warm-up, on `threads` CPU threads (default: all of this process's cores)
    or on the GPU, in `dtype` (default: compute_dtype); the best of `windows` equal spans of
    those seconds, so a neighbour's burst on a shared host reads as a slow window, not as
    a slow machine. The products' size is n, or the first size from 256 up, doubling, whose
    product takes over 0.05 s, so that an emulated dtype (bf16 on an AVX2-only CPU: ~1
    GFLOP/s) is measured in seconds rather than minutes."""
    dtype = dtype or compute_dtype(device)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    try:
        size = min(256, n)
        while True:
            a = torch.randn(size, size, device=device, dtype=dtype)
            b = torch.randn(size, size, device=device, dtype=dtype)
            a @ b  # the first product of a size pays for setting up (a GPU's BLAS handle)
            sync()
            start = time.perf_counter()
            a @ b
            sync()
            if size >= n or time.perf_counter() - start > 0.05:
                break
            size = min(2 * size, n)
        best = 0.0
        for _ in range(windows):
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / windows:
                for _ in range(2):
                    a @ b
                reps += 2
                sync()
            best = max(best, 2 * size**3 * reps / (time.perf_counter() - start))
        return best
    finally:
        torch.set_num_threads(before)


def cache_path() -> Path:
    """$XDG_CACHE_HOME/selfplay/peak_flops.json (~/.cache by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "selfplay" / "peak_flops.json"


def device_name(device: str) -> str:
    """The hardware's name: the GPU's, or the CPU's model name (Linux), else the platform's."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(device: str, dtype: torch.dtype, threads: int | None) -> str:
    """The cache's key: hardware, dtype, threads (CPU) and torch's version."""
    return " | ".join(
        [device_name(device), str(dtype).removeprefix("torch.")]
        + ([] if device.startswith("cuda") else [f"{threads} threads"])
        + [f"torch {torch.__version__}"]
    )


def cached_cpu_peak(cfg, cache: Path | None = None) -> float | None:
    """A CPU learner's peak in TFLOP/s (`cfg`: LearnerConfig with peak_tflops auto) as this
    machine's cache holds it, or None: not a CPU learner, or not measured yet. The driver
    reads it for a learner on its own machine, so the run starts without a task whose
    process would import torch only to read this file."""
    if cfg.num_gpus or cfg.device != "cpu" and (cfg.device != "auto" or torch.cuda.is_available()):
        return None  # a GPU learner, or one whose `auto` may find a GPU where it runs
    try:
        value = json.loads((cache or cache_path()).read_text()).get(
            cache_key("cpu", compute_dtype("cpu", cfg.bf16), cfg.threads)
        )
    except (OSError, ValueError, AttributeError):
        return None
    return value / 1e12 if isinstance(value, (int, float)) and value > 0 else None


def peak_flops(device: str, dtype: torch.dtype, threads: int, cache: Path | None = None) -> float:
    """The dense matmul rate of `device` in `dtype` (on `threads` CPU threads), from the cache
    when this machine measured it before, else measured (matmul_flops, n 8192 on a GPU) and
    added to the cache, keyed by hardware, dtype, threads and torch's version. One process
    measures at a time (a lock beside the cache): two at once, such as a learner group's
    ranks, would each see part of the machine. A cache that cannot be read or written is
    measured around, never fatal."""
    cache = cache or cache_path()
    gpu = device.startswith("cuda")
    key = cache_key(device, dtype, threads)

    def measure() -> float:
        return matmul_flops(device, dtype, threads, n=8192 if gpu else 2048)

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        lock = open(cache.parent / f".{cache.name}.lock", "a")
    except OSError:
        return measure()  # nowhere to keep it
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
        known = known if isinstance(known, dict) else {}
        value = known.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
        measured = measure()
        try:
            write_atomic(cache, json.dumps({**known, key: measured}, indent=1, sort_keys=True))
        except OSError:
            pass
        return measured


def learner_peak_flops(cfg, device: torch.device) -> float:
    """The peak FLOP/s the learner's MFU is read against (`cfg`: LearnerConfig): its
    `peak_tflops`, or (auto) `peak_flops` of `device` in the learner's compute dtype."""
    if cfg.peak_tflops != "auto":
        return cfg.peak_tflops * 1e12
    return peak_flops(str(device), compute_dtype(device.type, cfg.bf16), cfg.threads)


def measure_for(cfg) -> float:
    """`learner_peak_flops` on this machine's learner device, in TFLOP/s (`cfg`:
    LearnerConfig; run as a Ray task on the learner's resources before the run's actors)."""
    return learner_peak_flops(cfg, pick_device(cfg.device)) / 1e12
