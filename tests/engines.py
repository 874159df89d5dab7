"""A policy engine for plain tests (actors.engine.PolicyEngine without vLLM), as nanochat's
tests drive its Engine with a MockModel: one token per character after a BOS, replies
from a rule (observation text -> reply text), and "weights" that are one number, the
log-prob of every token it generates. It records every call, so tests can count them."""

from __future__ import annotations

import hashlib

from actors.engine import Completion
from selfplay.config import GeneratorConfig, TaskConfig

BOS = 1  # below every printable character's id


def encode(text: str) -> list[int]:
    return [BOS] + [ord(c) for c in text]


def decode(ids) -> str:
    """Inverse of `encode`, BOS dropped (as vLLM drops special tokens from output text)."""
    return "".join(chr(i) for i in ids if i != BOS)


def weights(logprob: float) -> bytes:
    """A weight blob for RuleEngine: every token it generates then has this log-prob."""
    return str(logprob).encode()


def checksum(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def legal_reply(observation: str) -> str:
    """A legal move for every built-in game, read from its observation: TicTacToe's first
    free cell, Kuhn poker's bet, Negotiation's 'take one of the first type' to open and
    accept after."""
    game, _, *rest = observation.split(">")[-1].rstrip(":").split()  # past a skill prefix
    if game == "tictactoe":
        return next(c for c in rest[0] if c.isdigit())
    if game == "kuhn":
        return "b"
    if game == "nego":
        return "1" if rest[1] == "get-" else "a"
    raise ValueError(f"legal_reply: no rule for {observation!r}")


class RuleEngine:
    def __init__(self, rule=legal_reply, logprob: float = -0.5, max_model_len: int = 256):
        self.rule = rule
        self.logprob = logprob
        self.max_model_len = max_model_len
        self.calls: list[dict] = []  # per generate: the prompts (as text), max_tokens, temperature
        self.loads: list[bytes] = []
        self.loads_during_generate = 0
        self.closed = False
        self.on_generate = None  # called as on_generate(call_index) inside each generate
        self._generating = False

    def encode(self, text: str) -> list[int]:
        return encode(text)

    def generate(self, prompts, max_tokens, temperature, stop=None, allowed=None) -> list[Completion]:
        self._generating = True
        try:
            if self.on_generate is not None:
                self.on_generate(len(self.calls))
            self.calls.append(
                {
                    "prompts": [decode(p) for p in prompts],
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "allowed": allowed,
                }
            )
            limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
            masks = allowed if allowed is not None else [None] * len(prompts)
            return [self._complete(decode(p), limit, a) for p, limit, a in zip(prompts, limits, masks)]
        finally:
            self._generating = False

    def _complete(self, prompt: str, limit: int, allowed: list[int] | None = None) -> Completion:
        ids = encode(self.rule(prompt))[1:][:limit]
        if allowed and (not ids or ids[0] not in allowed):  # as vLLM's mask: an allowed token
            ids = [allowed[0]]
        return Completion(ids, [self.logprob] * len(ids), decode(ids))

    def loglikelihood(self, prompts, continuations) -> list[float]:
        return [self.logprob * len(c) for c in continuations]

    def load_weights(self, blob: bytes) -> str:
        self.loads_during_generate += self._generating
        self.loads.append(blob)
        self.logprob = float(blob)
        return checksum(blob)

    def load_tensors(self, tensors) -> str:
        """Tensors as a collective broadcast brings them: {"logprob": a one-element tensor}."""
        return self.load_weights(weights(float(tensors["logprob"])))

    def close(self) -> None:
        self.closed = True


class EngineMaker:
    """`new_engine` for a Generator: a new RuleEngine per call, remembered with the model
    directory it was asked for (None: a league slot)."""

    def __init__(self, **engine_args):
        self.engine_args = engine_args
        self.made: list[tuple[str | None, RuleEngine]] = []

    def __call__(self, model_path: str | None) -> RuleEngine:
        engine = RuleEngine(**self.engine_args)
        self.made.append((model_path, engine))
        return engine


def rule_task_generator(rule, task_cfg: TaskConfig, max_response_tokens: int = 8, prompt_seeds=None):
    """A task run's plain Generator whose policy engine answers by `rule` (prompt text ->
    reply text); `prompt_seeds` as task.prompts sft gives it."""
    from actors.generator import Generator

    return Generator(
        "gen-0",
        "run-0",
        {"tictactoe": 1.0},
        RuleEngine(rule=rule),
        EngineMaker(),
        GeneratorConfig(max_response_tokens=max_response_tokens),
        seed=0,
        task_cfg=task_cfg,
        prompt_seeds=prompt_seeds,
    )
