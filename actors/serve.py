"""Serve a checkpoint through vLLM behind an OpenAI-compatible HTTP API (Ray Serve), to play
against it or to use it as an LLM judge.

`ChatModel` is the plain class: OpenAI JSON bodies in, OpenAI JSON bodies out, one engine
call for a whole batch of requests. `ModelServer` is the Ray Serve shell: FastAPI routes,
`@serve.batch` to gather concurrent requests, resources. `build_app` is what Serve config
files name (`import_path: actors.serve:build_app`)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import threading
import time
import types
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from actors.engine import Completion, Engine
from selfplay.config import ConfigError, Dtype, GeneratorConfig, ModelConfig, build
from selfplay.model import model_dir

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MAX_STOP = 4  # OpenAI's limit on stop strings
MAX_STOP_CHARS = 256  # per stop string
MAX_BODY_BYTES = 4 << 20  # default: a larger request body is refused (413) before it is parsed
MAX_PROMPT_CHARS = 100_000  # default: per request, refused (400) before it is tokenised
COMMON_FIELDS = {"model", "max_tokens", "temperature", "n", "stop", "logprobs", "user", "return_token_ids"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens", "top_logprobs"}
# Accepted only at the value that changes nothing; any other value would be silently ignored.
NEUTRAL = {
    "stream": False,
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "best_of": 1,
    "echo": False,
}
ROLES = ("system", "developer", "user", "assistant")
SYSTEM_ROLES = {"developer": "system"}  # as the model's template reads it


class BadRequest(ValueError):
    """A request that cannot be served; `param` names the offending field, `status` is the
    HTTP status it is answered with (400; 413 for a body over the limit; 401 without the
    API key)."""

    def __init__(self, param: str, message: str, status: int = 400, code: str | None = None):
        super().__init__(f"{param}: {message}")
        self.param = param
        self.status = status
        self.code = code

    def body(self) -> dict:
        return {
            "error": {
                "message": str(self),
                "type": "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        }


def key_digest(key: str) -> str:
    """What the server keeps of its API key: the SHA-256 hex digest (the key itself is
    never in the deployment's arguments, which the cluster stores and shows)."""
    return hashlib.sha256(key.encode()).hexdigest()


def authorize(header: str | None, digest: str | None) -> None:
    """Check an `Authorization: Bearer KEY` header against the key's digest (None: the
    server has no key and answers anyone who can reach it)."""
    if digest is None:
        return
    scheme, _, key = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise BadRequest("authorization", "missing 'Authorization: Bearer <API key>'", 401, "invalid_api_key")
    if not hmac.compare_digest(key_digest(key.strip()), digest):
        raise BadRequest("authorization", "invalid API key", 401, "invalid_api_key")


@dataclass
class Parsed:
    """One validated request: one or more prompts (a completion's prompt list), one engine
    sample each."""

    chat: bool
    prompts: list[list[int]]
    max_tokens: list[int]  # per prompt, within the context window
    temperature: float
    stop: list[str]
    logprobs: bool
    token_ids: bool  # vLLM's `return_token_ids` extension


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(body: dict, name: str, default, lo: float, hi: float | None = None, integer: bool = False):
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise BadRequest(name, f"expected {'an integer' if integer else 'a number'}, got {_show(value)}")
    # NaN (which Python's JSON reads) compares false with every bound: refused by name; an
    # int is compared exactly (math.isfinite of a 400-digit one raised OverflowError: a 500)
    if (
        (isinstance(value, float) and not math.isfinite(value))
        or value < lo
        or (hi is not None and value > hi)
    ):
        raise BadRequest(name, f"must be in [{lo}, {hi if hi is not None else 'inf'}], got {_show(value)}")
    return value


def _flag(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(name, f"expected true or false, got {_show(value)}")
    return bool(value)


def _stop(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if stops == []:  # OpenAI's clients send it: no stop strings
        return []
    if not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
        raise BadRequest("stop", f"expected a non-empty string or a list of them, got {_show(stop)}")
    if len(stops) > MAX_STOP:
        raise BadRequest("stop", f"at most {MAX_STOP} stop strings, got {len(stops)}")
    if max(len(s) for s in stops) > MAX_STOP_CHARS:
        raise BadRequest("stop", f"at most {MAX_STOP_CHARS} characters per stop string")
    return stops


class ChatModel:
    """An `Engine` answering OpenAI `/v1/models`, `/v1/completions` and
    `/v1/chat/completions` bodies. `parse_*` validate a body (raising `BadRequest`, never
    touching the engine); `run` answers a batch of parsed requests with one engine call."""

    def __init__(
        self,
        model_path: str,
        model_name: str,
        model_cfg: ModelConfig,
        gen_cfg: GeneratorConfig,
        seed: int = 0,
        max_prompts: int = 64,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
    ):
        self.engine = Engine(model_dir(model_path), model_cfg, gen_cfg, seed)
        self.name = model_name
        self.max_prompts = max_prompts
        self.max_prompt_chars = max_prompt_chars  # per request, checked before tokenising
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self.created = int(time.time())
        self.lock = threading.Lock()  # one engine call at a time
        self.counts = {"engine_calls": 0, "requests": 0, "prompts": 0, "completion_tokens": 0}

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "selfplay",
                    "max_model_len": self.max_model_len,
                }
            ],
        }

    def parse_completion(self, body) -> Parsed:
        self._check_fields(body, COMPLETION_FIELDS)
        prompt = body.get("prompt")
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
            raise BadRequest(
                "prompt", f"expected a string or a non-empty list of strings, got {_show(prompt)}"
            )
        if len(texts) > self.max_prompts:
            raise BadRequest("prompt", f"at most {self.max_prompts} prompts per request, got {len(texts)}")
        if not all(texts):
            raise BadRequest("prompt", "empty prompt")
        self._check_chars("prompt", sum(len(t) for t in texts))
        logprobs = body.get("logprobs")
        if logprobs is not None and (isinstance(logprobs, bool) or logprobs != 0):
            raise BadRequest(
                "logprobs", f"only 0 is supported (the sampled token's log-prob), got {_show(logprobs)}"
            )
        prompts = [self._fit("prompt", self.engine.encode(t)) for t in texts]
        return self._parsed(
            body, False, prompts, "max_tokens", DEFAULT_COMPLETION_TOKENS, logprobs is not None
        )

    def parse_chat(self, body) -> Parsed:
        self._check_fields(body, CHAT_FIELDS)
        messages = body.get("messages")
        if not (isinstance(messages, list) and messages):
            raise BadRequest("messages", f"expected a non-empty list of messages, got {_show(messages)}")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise BadRequest(
                    f"messages[{i}].role",
                    f"expected one of {ROLES} in a message object, "
                    f"got {_show(m.get('role') if isinstance(m, dict) else m)}",
                )
            if not isinstance(m.get("content"), str):
                raise BadRequest(
                    f"messages[{i}].content", f"expected a string, got {_show(m.get('content'))}"
                )
        self._check_chars("messages", sum(len(m["content"]) for m in messages))
        if body.get("top_logprobs") not in (None, 0):
            raise BadRequest("top_logprobs", f"only 0 is supported, got {_show(body['top_logprobs'])}")
        # OpenAI's developer message is the system message; templates know only the latter
        # (Qwen2.5's dropped a developer turn and put its default system prompt in its place)
        turns = [{"role": SYSTEM_ROLES.get(m["role"], m["role"]), "content": m["content"]} for m in messages]
        if self.tokenizer.chat_template:
            try:
                text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            except Exception as err:  # jinja2's TemplateError: a template that refuses an order of roles
                raise BadRequest("messages", f"the model's chat template refused them: {err}") from None
            ids = self.tokenizer(text, add_special_tokens=False).input_ids  # the template has them
        else:  # e.g. the default char-level model: its prompts are bare game observations
            text = "".join(m["content"] for m in turns)
            if not text:
                raise BadRequest("messages", "empty prompt: every message's content is empty")
            ids = self.engine.encode(text)
        limit_field = (
            "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        )
        return self._parsed(
            body, True, [self._fit("messages", ids)], limit_field, None, _flag(body, "logprobs")
        )

    def run(self, requests: list[Parsed]) -> list[dict]:
        """Answer parsed requests with one engine call; one response body per request."""
        prompts = [p for r in requests for p in r.prompts]
        limits = [m for r in requests for m in r.max_tokens]
        temps = [r.temperature for r in requests for _ in r.prompts]
        stops = [r.stop for r in requests for _ in r.prompts]
        with self.lock:
            outs = self.engine.generate(prompts, limits, temps, stops)
            self.counts["engine_calls"] += 1
            self.counts["requests"] += len(requests)
            self.counts["prompts"] += len(prompts)
            self.counts["completion_tokens"] += sum(len(o.token_ids) for o in outs)
        responses, start = [], 0
        for r in requests:
            done = outs[start : start + len(r.prompts)]
            responses.append(self._response(r, done))
            start += len(r.prompts)
        return responses

    def stats(self) -> dict:
        return dict(self.counts)

    def close(self) -> None:
        self.engine.close()

    def _check_fields(self, body, known: set[str]) -> None:
        if not isinstance(body, dict):
            raise BadRequest("body", f"expected a JSON object, got {type(body).__name__}")
        for name, value in body.items():
            if name in NEUTRAL and value in (None, NEUTRAL[name]):
                continue
            if name in NEUTRAL:
                raise BadRequest(name, f"only {NEUTRAL[name]!r} is supported, got {_show(value)}")
            if name not in known:
                raise BadRequest(
                    name, f"unknown or unsupported field (supported: {', '.join(sorted(known))})"
                )
        model = body.get("model")
        if model is not None and model != self.name:
            raise BadRequest("model", f"unknown model {_show(model)}; this server has {self.name!r}")
        if _number(body, "n", 1, 1, integer=True) != 1:
            raise BadRequest("n", f"only n=1 is supported, got {_show(body['n'])}")

    def _check_chars(self, param: str, chars: int) -> None:
        if chars > self.max_prompt_chars:
            raise BadRequest(
                param,
                f"{chars} characters of prompt; at most {self.max_prompt_chars} per request (max_prompt_chars)",
            )

    def _fit(self, param: str, ids: list[int]) -> list[int]:
        if len(ids) >= self.max_model_len:
            raise BadRequest(
                param,
                f"prompt is {len(ids)} tokens; the context window is {self.max_model_len} "
                "(max_model_len), which leaves no room for a reply",
            )
        return ids

    def _parsed(
        self,
        body: dict,
        chat: bool,
        prompts: list[list[int]],
        limit_field: str,
        default_limit: int | None,
        logprobs: bool,
    ) -> Parsed:
        requested = _number(body, limit_field, None, 1, integer=True)
        limits = []
        for ids in prompts:
            room = self.max_model_len - len(ids)
            if requested is None:  # chat (no default): up to the context window, as OpenAI's
                limits.append(min(default_limit or room, room))
            elif requested > room:
                raise BadRequest(
                    limit_field,
                    f"prompt ({len(ids)} tokens) + {limit_field} ({requested}) exceeds "
                    f"the context window ({self.max_model_len}, max_model_len)",
                )
            else:
                limits.append(requested)
        return Parsed(
            chat=chat,
            prompts=prompts,
            max_tokens=limits,
            temperature=float(_number(body, "temperature", 1.0, 0, 2)),
            stop=_stop(body),
            logprobs=logprobs,
            token_ids=_flag(body, "return_token_ids"),
        )

    def _response(self, r: Parsed, outs: list[Completion]) -> dict:
        choices = []
        for i, (prompt, out) in enumerate(zip(r.prompts, outs)):
            tokens = [self.tokenizer.decode([t]) for t in out.token_ids] if r.logprobs else []
            if r.chat:
                choice = {"index": i, "message": {"role": "assistant", "content": out.text}}
                logprobs = {
                    "content": [
                        {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": []}
                        for tok, lp in zip(tokens, out.logprobs)
                    ]
                }
            else:
                choice = {"index": i, "text": out.text}
                offsets = [sum(len(t) for t in tokens[:k]) for k in range(len(tokens))]
                logprobs = {
                    "tokens": tokens,
                    "token_logprobs": out.logprobs,
                    "top_logprobs": None,
                    "text_offset": offsets,
                }
            choice["finish_reason"] = out.finish_reason
            choice["logprobs"] = logprobs if r.logprobs else None
            if r.token_ids:
                choice["prompt_token_ids"] = prompt
                choice["token_ids"] = out.token_ids
            choices.append(choice)
        n_prompt = sum(len(p) for p in r.prompts)
        n_done = sum(len(o.token_ids) for o in outs)
        return {
            "id": f"{'chatcmpl' if r.chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion" if r.chat else "text_completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": choices,
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": n_done,
                "total_tokens": n_prompt + n_done,
            },
        }


# --- Ray Serve shell ---------------------------------------------------------------------

app = FastAPI(title="selfplay model server")


@app.exception_handler(BadRequest)
async def _bad_request(request: Request, err: BadRequest) -> JSONResponse:
    return JSONResponse(status_code=err.status, content=err.body())


@app.exception_handler(Exception)
async def _server_error(request: Request, err: Exception) -> JSONResponse:
    """Anything else, answered in OpenAI's error shape (not Starlette's plain text), without
    the traceback."""
    body = {
        "error": {"message": "internal server error", "type": "server_error", "param": None, "code": None}
    }
    return JSONResponse(status_code=500, content=body)


async def read_json(request, limit: int) -> object:
    """The request's JSON body, refused (413) past `limit` bytes before it is parsed: by
    its Content-Length, or while a body without one streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest("body", f"{declared} bytes; at most {limit} (max_body_bytes)", 413)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise BadRequest("body", f"over {limit} bytes (max_body_bytes)", 413)
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # JSONDecodeError, undecodable bytes, '[' nested 100,000 deep
        raise BadRequest("body", "not valid JSON") from None


def _prompt_count(requests: list[Parsed]) -> int:
    return sum(len(r.prompts) for r in requests)


@serve.deployment(max_ongoing_requests=128)
@serve.ingress(app)
class ModelServer:
    """Thin shell: routes, batching, resources. Concurrent requests are gathered by
    `@serve.batch` into one engine call, run off the event loop; batches run one at a time."""

    def __init__(
        self,
        model_path: str,
        model_name: str,
        model_cfg: ModelConfig,
        gen_cfg: GeneratorConfig,
        seed: int = 0,
        max_batch_size: int = 64,
        limits: dict | None = None,
    ):
        """`limits`: max_body_bytes, max_prompt_chars and api_key_sha256 (`ServeConfig`)."""
        limits = limits or {}
        self.max_body_bytes = limits.get("max_body_bytes", MAX_BODY_BYTES)
        self.key = limits.get("api_key_sha256")
        self.model = ChatModel(
            model_path,
            model_name,
            model_cfg,
            gen_cfg,
            seed,
            max_prompts=max_batch_size,
            max_prompt_chars=limits.get("max_prompt_chars", MAX_PROMPT_CHARS),
        )
        self._generate.set_max_batch_size(max_batch_size)

    async def _body(self, request: Request) -> object:
        authorize(request.headers.get("authorization"), self.key)
        return await read_json(request, self.max_body_bytes)

    @app.get("/v1/models")
    def models(self, request: Request) -> dict:
        authorize(request.headers.get("authorization"), self.key)
        return self.model.models()

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> dict:
        return await self._generate(self.model.parse_completion(await self._body(request)))

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> dict:
        return await self._generate(self.model.parse_chat(await self._body(request)))

    def stats(self) -> dict:
        """Engine calls, requests, prompts and tokens so far (through a deployment handle)."""
        return self.model.stats()

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01, batch_size_fn=_prompt_count)
    async def _generate(self, requests: list[Parsed]) -> list[dict]:
        return await asyncio.to_thread(self.model.run, requests)

    def __del__(self):
        if hasattr(self, "model"):  # the constructor may have failed before the engine was up
            self.model.close()


@dataclass
class ServeConfig:
    """`args` of `build_app`, i.e. of a Serve config file's application."""

    checkpoint: str = ""  # an HF model directory or a checkpoint directory holding one in model/
    model_name: str | None = None  # the `model` clients send; None: the checkpoint directory's name
    max_model_len: int | None = None  # None: the model's own max_position_embeddings
    dtype: Dtype = "auto"  # auto: resolved on each replica (selfplay/device.py:pick_dtype)
    num_replicas: int = 1
    num_cpus: float = 1.0  # per replica
    num_gpus: float = 0.0  # per replica; one engine per replica, no tensor parallelism
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {generator: 1}
    max_batch_size: int = 64  # prompts per engine call (and per request)
    max_body_bytes: int = MAX_BODY_BYTES
    max_prompt_chars: int = MAX_PROMPT_CHARS
    # the SHA-256 of the API key clients send as `Authorization: Bearer KEY` (`key_digest`;
    # `selfplay serve --api-key-file` computes it); None: no key. Required off loopback
    api_key_sha256: str | None = None
    seed: int = 0
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU
    gpu_memory_utilization: float = 0.9  # the replica's GPU serves nothing else
    enforce_eager: bool = False


def serve_config(args: dict) -> ServeConfig:
    """Validate `build_app`'s args; errors name the field. `serve run IMPORT_PATH key=value`
    passes every value as a string, so non-string fields are read as YAML scalars."""
    hints = typing.get_type_hints(ServeConfig)

    def read(name: str, value):
        typ = hints.get(name)
        options = (
            typing.get_args(typ) if typing.get_origin(typ) in (types.UnionType, typing.Union) else (typ,)
        )
        return yaml.safe_load(value) if isinstance(value, str) and typ and str not in options else value

    cfg = build(ServeConfig, {k: read(k, v) for k, v in args.items()})
    if not cfg.checkpoint:
        raise ConfigError("checkpoint: required (an HF model directory or a checkpoint directory)")
    for name in (
        "num_replicas",
        "max_batch_size",
        "kv_cache_gib",
        "max_model_len",
        "max_body_bytes",
        "max_prompt_chars",
    ):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}: must be > 0, got {getattr(cfg, name)!r}")
    for name in ("num_cpus", "num_gpus"):
        if not getattr(cfg, name) >= 0:
            raise ConfigError(f"{name}: must be >= 0, got {getattr(cfg, name)!r}")
    if cfg.api_key_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", cfg.api_key_sha256):
        raise ConfigError("api_key_sha256: expected the key's SHA-256 as 64 hex digits, not the key")
    if not 0 < cfg.gpu_memory_utilization <= 1:
        raise ConfigError(f"gpu_memory_utilization: must be in (0, 1], got {cfg.gpu_memory_utilization!r}")
    return cfg


def build_app(args: dict) -> serve.Application:
    """Serve application builder: `serve run actors.serve:build_app checkpoint=runs/.../step_0000500`
    or a config file with `import_path: actors.serve:build_app` and `args`."""
    cfg = serve_config(args)
    model_cfg = ModelConfig(path=cfg.checkpoint, dtype=cfg.dtype, max_model_len=cfg.max_model_len)
    gen_cfg = GeneratorConfig(
        kv_cache_gib=cfg.kv_cache_gib,
        gpu_memory_utilization=cfg.gpu_memory_utilization,
        enforce_eager=cfg.enforce_eager,
    )
    path = Path(cfg.checkpoint).resolve()
    name = cfg.model_name or (path.parent.name if path.name == "model" else path.name)  # step_NNNNNNN
    return ModelServer.options(
        num_replicas=cfg.num_replicas,
        max_ongoing_requests=2 * cfg.max_batch_size,
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "resources": cfg.resources},
    ).bind(
        cfg.checkpoint,
        name,
        model_cfg,
        gen_cfg,
        cfg.seed,
        cfg.max_batch_size,
        {
            "max_body_bytes": cfg.max_body_bytes,
            "max_prompt_chars": cfg.max_prompt_chars,
            "api_key_sha256": cfg.api_key_sha256,
        },
    )
