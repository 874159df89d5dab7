"""learner.peak_tflops: what MFU is read against, given or measured once per machine."""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from learner import peak
from learner.learner import Learner
from selfplay.config import ConfigError, load_config
from selfplay.model import create_default_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(create_default_model(tmp_path_factory.mktemp("m"), preset="1m", max_positions=64))


@pytest.fixture
def counted(monkeypatch):
    """matmul_flops replaced by a counter that returns 1e11 FLOP/s per call made."""
    calls = []

    def fake(device, dtype, threads, n):
        calls.append((device, dtype, threads, n))
        return 1e11 * len(calls)

    monkeypatch.setattr(peak, "matmul_flops", fake)
    return calls


def test_the_peak_is_measured_once_per_machine_dtype_and_threads(tmp_path, counted):
    cache = tmp_path / "sub" / "peak_flops.json"
    assert peak.peak_flops("cpu", torch.float32, 2, cache) == 1e11
    assert peak.peak_flops("cpu", torch.float32, 2, cache) == 1e11  # from the cache
    assert counted == [("cpu", torch.float32, 2, 2048)]
    assert peak.peak_flops("cpu", torch.float32, 1, cache) == 2e11  # other threads: measured
    assert peak.peak_flops("cpu", torch.bfloat16, 2, cache) == 3e11  # another dtype too
    known = json.loads(cache.read_text())
    assert len(known) == 3 and sorted(known.values()) == [1e11, 2e11, 3e11]
    key = next(k for k, v in known.items() if v == 1e11)
    assert f"{peak.device_name('cpu')} | float32 | 2 threads | torch {torch.__version__}" == key


def test_one_process_measures_at_a_time(tmp_path, monkeypatch):
    calls = []

    def slow(device, dtype, threads, n):
        calls.append(device)
        time.sleep(0.3)  # both would read an empty cache within it, but for the lock
        return 1e11

    monkeypatch.setattr(peak, "matmul_flops", slow)
    with ThreadPoolExecutor(2) as pool:
        got = list(
            pool.map(lambda _: peak.peak_flops("cpu", torch.float32, 2, tmp_path / "p.json"), range(2))
        )
    assert got == [1e11, 1e11] and calls == ["cpu"]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"x": -1}'])
def test_a_cache_that_cannot_be_read_is_measured_around(tmp_path, counted, text):
    cache = tmp_path / "peak_flops.json"
    cache.write_text(text)
    assert peak.peak_flops("cpu", torch.float32, 2, cache) == 1e11
    assert len(json.loads(cache.read_text())) >= 1  # rewritten whole
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert peak.peak_flops("cpu", torch.float32, 2, blocked / "peak.json") == 2e11  # unwritable


def test_the_compute_dtype_follows_learner_bf16(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(peak, "native_bf16", lambda device="cpu", v=native: v)
        assert peak.compute_dtype("cpu", True) == torch.bfloat16
        assert peak.compute_dtype("cpu", False) == torch.float32
        assert peak.compute_dtype("cpu", "auto") == (torch.bfloat16 if native else torch.float32)


def test_the_learner_reads_mfu_against_the_given_or_the_measured_peak(
    model_dir, counted, monkeypatch, tmp_path
):
    given = load_config(None, ["learner.peak_tflops=2.5"])
    assert Learner(given.learner, given.model, model_dir, seed=0).peak_flops == 2.5e12
    assert counted == []  # a given peak is not measured
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = load_config(None, ["learner.bf16=false"])
    assert cfg.learner.peak_tflops == "auto"  # the default
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    assert learner.peak_flops == 1e11 and counted[0][1:3] == (torch.float32, cfg.learner.threads)
    assert (tmp_path / "selfplay" / "peak_flops.json").exists()
    assert peak.measure_for(cfg.learner) == pytest.approx(0.1)  # TFLOP/s, from the cache
    assert len(counted) == 1


@pytest.mark.parametrize("value", ["0", "-1", "nan", "fast"])
def test_a_bad_peak_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match="learner.peak_tflops"):
        load_config(None, [f"learner.peak_tflops={value}"])


def test_the_peak_task_imports_neither_transformers_nor_vllm():
    """Every run measures (or reads) the peak in a Ray task of its own before its actors
    start, a fresh process: transformers alone takes ~5 s to import on 2 cores."""
    import subprocess
    import sys

    code = "import sys, learner.peak; print(sorted({'transformers', 'vllm'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"learner/peak.py pulls in {out.stdout.strip()}"


def test_a_local_cpu_run_reads_this_machines_cached_peak_without_a_task(ray_session, tmp_path, monkeypatch):
    """On a one-node Ray that is the driver's machine, a CPU learner's peak comes from this
    machine's cache when it holds the figure; otherwise (and for a GPU learner) from the task
    on the learner's resources, which measures it there."""
    from selfplay import program

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tasks = []

    def task(cfg, fn):
        tasks.append(fn)
        return program.ray.remote(lambda _: 0.5)

    monkeypatch.setattr(program, "learner_task", task)
    cfg = load_config(None, ["learner.bf16=false"])
    assert program.learner_peak(cfg) == 0.5 and tasks == [peak.measure_for]  # nothing cached yet
    cache = tmp_path / "selfplay" / "peak_flops.json"
    cache.parent.mkdir()
    cache.write_text(json.dumps({peak.cache_key("cpu", torch.float32, cfg.learner.threads): 3e11}))
    assert program.learner_peak(cfg) == pytest.approx(0.3) and len(tasks) == 1  # read here
    bf16 = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, bf16=True))
    assert program.learner_peak(bf16) == 0.5 and len(tasks) == 2  # another key: measured
    from ray.util.client import ray as ray_client

    with monkeypatch.context() as m:  # through a Ray client the cluster may be another machine
        m.setattr(ray_client, "is_connected", lambda: True)
        assert program.learner_peak(cfg) == 0.5 and len(tasks) == 3
    gpu = dataclasses.replace(cfg.learner, num_gpus=1)
    assert peak.cached_cpu_peak(gpu) is None and peak.cached_cpu_peak(cfg.learner) == pytest.approx(0.3)
