"""Which device and dtype this machine computes in: light (torch only), so a process that
only asks, such as learner/peak.py's task that every run starts before its actors, does not
import transformers (~5 s on 2 cores)."""

from __future__ import annotations

import torch


def native_bf16(device: str = "cpu") -> bool:
    """Whether `device` (cpu, cuda, cuda:N) multiplies bfloat16 in hardware: a CUDA device
    that supports it, or a CPU with AMX or AVX512-BF16. Elsewhere torch emulates it, e.g. on
    a 2-core AVX2-only AMD EPYC (measured 2026-12-03): a 1024 x 1024 matmul at 0.8 GFLOP/s
    in bf16 against 127 in fp32, the demo's learner step 10.4x slower under bf16 autocast,
    a 1m-preset vLLM-CPU engine 2.2x slower (README, "dtype")."""
    if device.startswith("cuda"):
        # emulation excluded: a T4 or V100 "supports" bf16 by emulating it (and vLLM refuses it)
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_dtype(requested: str, native: bool) -> str:
    """model.dtype: `auto` is bfloat16 where the hardware computes it natively (`native`),
    float32 where bf16 would be emulated; any other value is kept."""
    if requested != "auto":
        return requested
    return "bfloat16" if native else "float32"


def resolve_dtype(requested: str) -> str:
    """`requested` on this machine (pick_dtype): its CUDA device if torch sees one, else its CPU."""
    return pick_dtype(requested, native_bf16("cuda" if torch.cuda.is_available() else "cpu"))


def pick_device(requested: str) -> torch.device:
    """The learner's device, decided once (config `learner.device`): `auto` takes the GPU
    when torch sees one, else the CPU. Model, reference, batches and autocast follow it."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"learner.device: {requested!r} asked for, but torch sees no GPU")
    return device
