"""A vLLM engine with in-place weight reload. Plain class; used by generator actors, the
eval command and the benchmarks. `PolicyEngine` says what the generator needs of an engine,
so its game loop can also run on a small scripted one (tests/engines.py)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from selfplay.config import GeneratorConfig, ModelConfig

if TYPE_CHECKING:  # torch loads with vLLM, in the engine's process, not with the module: the
    import torch  # controller imports this module to start generators and needs no torch

WORKER_EXTENSION = "actors.engine_ext.WeightReceiver"


@dataclass
class Completion:
    token_ids: list[int]
    logprobs: list[float]  # log-prob of each sampled token under the engine's policy
    text: str
    finish_reason: str = "length"  # vLLM's: "stop" (EOS or a stop string) or "length"


class PolicyEngine(Protocol):
    """One policy served for generation: vLLM's `Engine` in runs, a scripted one in tests."""

    max_model_len: int  # prompt plus reply, in tokens

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, as prompts are fed to `generate`."""

    def generate(
        self,
        prompts: list[list[int]],
        max_tokens: int | list[int],
        temperature: float | list[float],
        stop: list[list[str]] | None = None,
        allowed: list[list[int] | None] | None = None,
    ) -> list[Completion]:
        """One sampled completion per prompt, in order, with the log-prob of each token;
        `allowed`: per prompt, the only tokens it may be drawn from (None: any)."""

    def loglikelihood(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[float]:
        """Log-likelihood of each continuation after its prompt."""

    def load_weights(self, blob: bytes) -> str:
        """Replace the weights in place (safetensors bytes); returns the checksum loaded."""

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> str:
        """Replace the weights in place (named tensors); returns the checksum loaded."""

    def close(self) -> None:
        """Release the engine's resources."""


# A new engine on a model directory (None: the learner's model, for a league slot whose
# weights are then loaded in place).
EngineFactory = Callable[[str | None], PolicyEngine]


def sampling_params(
    n: int,
    max_tokens: int | list[int],
    temperature: float | list[float],
    stop: list[list[str]] | None = None,
    allowed: list[list[int] | None] | None = None,
) -> list:
    """vLLM's SamplingParams for each of `n` prompts (Engine.generate's arguments), one
    object per distinct setting. No per-request seed: on CPU it crashes vLLM 0.32 under
    chunked prefill ("CPU Generator does not use offset"); the engine-level seed is set
    instead."""
    from vllm import SamplingParams

    limits = max_tokens if isinstance(max_tokens, list) else [max_tokens] * n
    temps = temperature if isinstance(temperature, list) else [temperature] * n
    stops = [tuple(s) for s in stop] if stop is not None else [()] * n
    masks = [tuple(a) if a else () for a in allowed] if allowed is not None else [()] * n
    keys = list(zip(limits, temps, stops, masks))
    by_key = {
        k: SamplingParams(
            max_tokens=k[0],
            temperature=k[1],
            stop=list(k[2]) or None,
            allowed_token_ids=list(k[3]) or None,
            logprobs=0,
        )
        for k in set(keys)
    }
    return [by_key[k] for k in keys]


class Engine:
    """PolicyEngine on vLLM."""

    def __init__(self, model_path: str, model_cfg: ModelConfig, gen_cfg: GeneratorConfig, seed: int):
        # Read by the CPU backend only.
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(gen_cfg.kv_cache_gib)
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = gen_cfg.cpu_bind
        # vLLM 0.32 on torch >= 2.12 saves a compiled model as an AOT artifact that it then
        # fails to load ("'function' object has no attribute 'finalize_loading'"), so every
        # engine compiled its model again: ~20 s on 2 cores for each generator, league
        # slot, evaluation engine and replacement. Its older compile cache loads: an
        # engine of a model shape compiled before on this host starts in a few seconds.
        # A user's own setting wins.
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        if gen_cfg.tensor_parallel_size > 1:  # workers go into the caller's placement group
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
            parallel = {
                "tensor_parallel_size": gen_cfg.tensor_parallel_size,
                "distributed_executor_backend": "ray",
            }
        else:
            # One worker: the engine core and its worker run in this process, not in two
            # processes of their own. An engine then starts in 3-8 s instead of ~25 s on
            # vLLM-CPU (each spawned process re-imports torch and vLLM), which is what a
            # replaced generator, a league slot or an evaluation engine waits for; a call
            # skips two inter-process hops. Engine calls are serialised by their callers
            # (the generator's and the Serve model's locks), as vLLM's in-process engine needs.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            parallel = {"distributed_executor_backend": "uni"}
        self.in_process = gen_cfg.tensor_parallel_size == 1
        import vllm.envs
        from vllm import LLM

        from selfplay.device import resolve_dtype

        # An engine core in this process caches vLLM's environment once it starts; the
        # variables above are read afresh for each engine.
        vllm.envs.disable_envs_cache()
        self.llm = LLM(
            model=model_path,
            dtype=resolve_dtype(model_cfg.dtype),  # a run config holds a resolved one
            max_model_len=model_cfg.max_model_len,
            seed=seed,
            worker_extension_cls=WORKER_EXTENSION,
            # log-probs of the policy sampled (after temperature), which the learner's PPO
            # ratio divides by; vLLM's default, raw_logprobs, is the T = 1 policy.
            logprobs_mode="processed_logprobs",
            enforce_eager=gen_cfg.enforce_eager,
            gpu_memory_utilization=gen_cfg.gpu_memory_utilization,
            **parallel,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids

    def generate(
        self,
        prompts: list[list[int]],
        max_tokens: int | list[int],
        temperature: float | list[float],
        stop: list[list[str]] | None = None,
        allowed: list[list[int] | None] | None = None,
    ) -> list[Completion]:
        """Sample one completion per prompt; `max_tokens`, `temperature`, `stop` (strings
        that end a completion; vLLM leaves them out of `text`, not of `token_ids`) and
        `allowed` (the only token ids it may draw, vLLM's `allowed_token_ids`, masked before
        temperature, so the processed log-probs are the restricted policy's) may differ per
        prompt."""
        params = sampling_params(len(prompts), max_tokens, temperature, stop, allowed)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        done = []
        for out in outputs:
            o = out.outputs[0]
            ids = list(o.token_ids)
            logps = [o.logprobs[i][t].logprob for i, t in enumerate(ids)]
            done.append(Completion(ids, logps, o.text, o.finish_reason))
        return done

    def loglikelihood(self, prompts: list[list[int]], continuations: list[list[int]]) -> list[float]:
        """Log-likelihood of each continuation after its prompt under the engine's weights
        (sum over the continuation's tokens), from vLLM's prompt log-probs."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        seqs = [p + c for p, c in zip(prompts, continuations)]
        outputs = self.llm.generate([{"prompt_token_ids": s} for s in seqs], params, use_tqdm=False)
        return [
            sum(out.prompt_logprobs[i][seq[i]].logprob for i in range(len(p), len(seq)))
            for out, seq, p in zip(outputs, seqs, prompts)
        ]

    def close(self) -> None:
        """Stop the engine process now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()

    def load_weights(self, blob: bytes) -> str:
        """Replace the weights in place from safetensors bytes; returns their checksum."""
        (checksum,) = set(self.llm.collective_rpc("receive_weights", args=(blob,)))
        return self._forget_prefixes(checksum)

    def _forget_prefixes(self, checksum: str) -> str:
        """After a load: vLLM's prefix cache (on by default; keyed by token ids alone) holds
        keys and values the old weights computed, which a prompt sharing a cached block would
        reuse (a mix of old and new weights behind log-probs the checksum vouches for; a
        league slot's new member reading the last one's). Nothing runs meanwhile: engine
        calls are serial. Returns `checksum`."""
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("the engine's prefix cache could not be reset after a weight load")
        return checksum

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> str:
        """Replace the weights in place from named tensors (a collective broadcast's);
        returns their checksum. Handed over as they are to a worker in this process; as
        safetensors bytes to workers of their own (tensor parallel), which msgpack carries."""
        if self.in_process:
            (checksum,) = set(self.llm.collective_rpc("load_tensors", args=(tensors,)))
            return self._forget_prefixes(checksum)
        from safetensors.torch import save

        return self.load_weights(save(tensors))
