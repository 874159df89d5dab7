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
