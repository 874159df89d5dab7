"""Session fixtures for integration tests: one local Ray, one tiny model, one generator
(one vLLM engine) shared by every test that needs them, in each pytest worker (`make test`
runs two, pytest-xdist, a module's tests on one worker: modules meet the session fixtures
in any order, so no test may leave them unusable)."""

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


# Watchdogs, so that a hang fails in minutes and says where instead of taking CI's 90 minutes
# with nothing printed: a test (setup and teardown included) that runs past TEST_LIMIT_S, or an
# interpreter that has not exited EXIT_GRACE_S after the run (a non-daemon thread a test left
# running, e.g. a `concurrent.futures` worker, which is joined at exit), prints every thread's
# stack and ends the process with a failing status.
TEST_LIMIT_S = float(os.environ.get("SELFPLAY_TEST_LIMIT_S", "1500"))
EXIT_GRACE_S = float(os.environ.get("SELFPLAY_TEST_EXIT_GRACE_S", "300"))
RUNNING: dict = {"test": None, "since": 0.0, "done": None, "status": 0, "config": None}


def give_up(why: str, status: int) -> None:
    import faulthandler
    import sys
    import threading

    capture = RUNNING["config"].pluginmanager.getplugin("capturemanager")
    if capture is not None:  # a test's output is captured to a file that os._exit would lose
        capture.suspend_global_capture(in_=False)
    sys.stdout.flush()  # the progress dots so far
    names = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
    print(f"\ntests: {why}; non-daemon threads alive: {names}; every thread's stack follows", file=sys.stderr)
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(status)


def watchdog() -> None:
    """Once a second (a daemon thread's tick, not a test waiting): a test past TEST_LIMIT_S, or
    an interpreter still alive EXIT_GRACE_S after the run, gives up."""
    import time

    while True:
        time.sleep(1.0)
        now = time.monotonic()
        if RUNNING["test"] is not None and now - RUNNING["since"] > TEST_LIMIT_S:
            give_up(f"{RUNNING['test']} still running after {TEST_LIMIT_S:.0f} s", 1)
        if RUNNING["done"] is not None and now - RUNNING["done"] > EXIT_GRACE_S:
            give_up(
                f"the interpreter did not exit {EXIT_GRACE_S:.0f} s after the run", RUNNING["status"] or 1
            )


def pytest_sessionstart(session):
    import threading

    RUNNING["config"] = session.config
    threading.Thread(target=watchdog, name="test-watchdog", daemon=True).start()


def pytest_runtest_logstart(nodeid, location):
    import time

    RUNNING.update(test=nodeid, since=time.monotonic())


def pytest_runtest_logfinish(nodeid, location):
    RUNNING["test"] = None


def pytest_sessionfinish(session, exitstatus):
    RUNNING["status"] = int(exitstatus)


def pytest_unconfigure(config):
    import time

    if os.environ.get("PYTEST_XDIST_WORKER"):
        # a worker's interpreter then waits for the controller to end the run, which the
        # other worker's tests may hold for minutes yet; the controller's own watchdog
        # covers the exit
        return
    RUNNING["done"] = time.monotonic()
