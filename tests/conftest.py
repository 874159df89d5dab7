"""Session fixtures for integration tests: one local Ray, one tiny model, one generator
(one vLLM engine) shared by every test that needs them."""

from __future__ import annotations

import dataclasses
import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from selfplay.files import local_ray_auth

    local_ray_auth()
    # Logical CPUs: the session generator, learner and a driver run's actors coexist;
    # only one engine is busy at a time.
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        namespace="selfplay-tests",
        logging_level="ERROR",
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from selfplay.model import create_default_model

    return str(create_default_model(tmp_path_factory.mktemp("model"), preset="1m", max_positions=64))


@pytest.fixture(scope="session")
def small_cfg():
    from selfplay.config import load_config

    return load_config(
        None,
        [
            "model.preset=1m",
            "model.max_model_len=64",
            "generator.games_per_wave=64",
            "generator.max_response_tokens=2",
            "learner.batch_size=64",
            "learner.lr=1e-3",
            "buffer.min_size=64",
            "buffer.max_staleness=1",
            "buffer.spi_tolerance=512",
            "eval.games=8",
            "verifier.num_cpus=0",
            "generator.enforce_eager=true",  # engine starts dominate the suite; the session generator compiles
        ],
    )


@pytest.fixture(scope="session")
def engine_dtype(small_cfg):
    """What the session's engines hold: model.dtype auto on this machine (bf16 where the CPU
    has it natively, else fp32), so weights sent in it are held byte for byte."""
    import torch

    return getattr(torch, small_cfg.model.dtype)


@pytest.fixture(scope="session")
def generator(ray_session, tiny_model, small_cfg):
    """Compiled (not eager), as runs use it: weight reloads and log-prob checks go through
    the same graph the demo runs."""
    from actors.generator import GeneratorActor

    compiled = dataclasses.replace(small_cfg.generator, enforce_eager=False)
    g = GeneratorActor.options(name="test-generator").remote(
        "generator-0",
        "test",
        {"tictactoe": 1.0},
        tiny_model,
        small_cfg.model,
        compiled,
        1,
        max_live_opponents=1,
    )
    ray_session.get(g.stats.remote())  # the engine is up
    return g


EXIT_GRACE_S = float(os.environ.get("SELFPLAY_TEST_EXIT_GRACE_S", "300"))


def pytest_unconfigure(config):
    """A watchdog for the interpreter's exit: a thread a test left running (a non-daemon
    worker, e.g. `concurrent.futures`' which are joined at exit) would hold the process after
    the summary until CI's limit. If it has not exited EXIT_GRACE_S seconds after the run, print
    the live threads' stacks and exit with the run's status (1 if the tests had passed)."""
    import faulthandler
    import sys
    import threading

    status = getattr(config, "_selfplay_exitstatus", 0)

    def watch():
        import time

        time.sleep(EXIT_GRACE_S)
        names = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
        print(
            f"\ntests: the interpreter did not exit {EXIT_GRACE_S:.0f} s after the run; "
            f"non-daemon threads still alive: {names}; every thread's stack follows",
            file=sys.stderr,
            flush=True,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(int(status) or 1)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()


def pytest_sessionfinish(session, exitstatus):
    session.config._selfplay_exitstatus = exitstatus
