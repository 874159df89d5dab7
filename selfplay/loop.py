"""The algorithm in one place: one synchronous iteration of self-play training, read top
to bottom. Start here.

    1. self-play   the generator plays a wave of games against itself; every pending
                   model turn of every game goes into one vLLM call, and each turn keeps
                   the token ids, the behaviour log-probs and the weight version
                   (actors/generator.py)
    2. verify      the verifier replays every game by its rules, rejects malformed ones
                   with a counted reason, and attaches rewards and returns
                   (actors/verifier.py)
    3. buffer      accepted turns enter the replay buffer, which drops turns too many
                   versions old and limits samples per insert (actors/buffer.py)
    4. train step  the learner samples a batch and takes one PPO-clip step on SPIRAL's
                   role-conditioned advantages (learner/learner.py, learner/losses.py,
                   learner/advantages.py)
    5. export      the new weights become safetensors bytes in the engine's dtype, with a
                   checksum (selfplay/weights.py)
    6. weights     the generator loads them in place, without restarting its engine, and
                   echoes the checksum of what it loaded (actors/engine_ext.py)

The distributed run is this same loop split across Ray actors so that the parts overlap
(selfplay/program.py builds them, selfplay/driver.py paces them): generators repeat 1
without waiting for the learner and hand each wave to the verifier actor (2), which
forwards it to the buffer actor (3); the learner actor repeats 4-5 on whatever the buffer
holds and broadcasts 6 to every generator every `learner.broadcast_every` steps, checking
the echoed checksums at the next broadcast (learner/service.py). Because generation runs
ahead of training, turns are up to `buffer.max_staleness` versions old; PPO's ratio is
taken against the behaviour log-probs that generated them."""

from __future__ import annotations

from dataclasses import dataclass

from actors.buffer import ReplayBuffer
from actors.generator import Generator
from actors.verifier import Verifier
from learner.learner import Learner
from selfplay.config import RunConfig
from selfplay.text import text_codec


class WeightsNotLoaded(RuntimeError):
    """The generator's engine reports loading weights other than the ones exported."""


@dataclass
class Parts:
    generator: Generator
    verifier: Verifier
    buffer: ReplayBuffer
    learner: Learner


def build_parts(cfg: RunConfig, model_path: str) -> Parts:
    """One of each part, in this process, on the model at `model_path`."""
    encode, decode = text_codec(model_path)  # as vLLM renders output text (Verifier.for_model)
    return Parts(
        generator=Generator.from_model(
            "generator-0", cfg.name, cfg.games, model_path, cfg.model, cfg.generator, cfg.seed
        ),
        verifier=game_verifier(cfg, decode, encode),
        buffer=ReplayBuffer(cfg.buffer, cfg.seed),
        learner=Learner(cfg.learner, cfg.model, model_path, cfg.seed, cfg.generator.temperature),
    )


def game_verifier(cfg: RunConfig, decode, encode) -> Verifier:
    """The loop's verifier: it replays each game as the generator dealt it, in its view
    with generator.board_symmetries (replayed on the plain board, every such game was
    rejected and the loop generated waves for ever: tictactoe.yaml, `make bench`)."""
    return Verifier(decode, encode=encode, symmetric_views=cfg.generator.board_symmetries)


def iteration(parts: Parts, cfg: RunConfig) -> dict:
    """Steps 1-6 once; returns the learner's metrics for its step."""
    g, v, buffer, learner = parts.generator, parts.verifier, parts.buffer, parts.learner
    batch = buffer.sample(cfg.learner.batch_size, learner.version)
    while batch is None:  # the buffer hands out a batch once it holds min_size fresh turns
        games = g.self_play(cfg.generator.games_per_wave)  # 1. self-play
        buffer.add(v.training_turns(games))  # 2. verify, 3. buffer
        batch = buffer.sample(cfg.learner.batch_size, learner.version)
    metrics = learner.train_step(batch)  # 4. train step
    blob, checksum = learner.export()  # 5. export
    learner.version += 1
    loaded = g.set_weights(blob, learner.version)  # 6. weights
    if loaded != checksum:
        raise WeightsNotLoaded(f"the generator loaded weights {loaded}, the learner exported {checksum}")
    return metrics


def train(parts: Parts, cfg: RunConfig, steps: int) -> list[dict]:
    """`steps` iterations; the learner's metrics of each."""
    return [iteration(parts, cfg) for _ in range(steps)]
