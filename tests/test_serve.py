"""The OpenAI-compatible Serve app: one deployment (one vLLM engine) on the session's local
Ray, answered over real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from actors.serve import BadRequest, _number, authorize, build_app, key_digest, serve_config
from selfplay.config import ConfigError
from selfplay.net import free_port

OBS = "tictactoe X 123456789:"
KEY = "test-key-7f3a"  # the fixture server's API key
LIMITS = {"max_body_bytes": 65536, "max_prompt_chars": 2000}


def call(url: str, body=None, raw: bytes | None = None, key: str | None = KEY) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(ray_session, tiny_model, tmp_path_factory):
    """(base url, deployment handle, tokenizer) for a checkpoint directory laid out as the
    driver writes it (`step_N/model/`)."""
    from ray import serve
    from transformers import AutoTokenizer

    checkpoint = tmp_path_factory.mktemp("run") / "step_0000007"
    shutil.copytree(tiny_model, checkpoint / "model")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    handle = serve.run(
        build_app(
            {
                "checkpoint": str(checkpoint),
                "max_batch_size": 16,
                "enforce_eager": True,
                "api_key_sha256": key_digest(KEY),
                **LIMITS,
            }
        ),
        name="selfplay-model",
        route_prefix="/",
    )
    yield f"http://127.0.0.1:{port}", handle, AutoTokenizer.from_pretrained(tiny_model)
    serve.shutdown()


@pytest.mark.integration
def test_models_names_the_checkpoint(server):
    url, _, _ = server
    status, body = call(f"{url}/v1/models")
    assert status == 200
    assert [(m["id"], m["object"], m["max_model_len"]) for m in body["data"]] == [
        ("step_0000007", "model", 64)
    ]


@pytest.mark.integration
def test_completion_of_a_game_observation(server):
    url, _, tok = server
    status, body = call(
        f"{url}/v1/completions",
        {
            "model": "step_0000007",
            "prompt": OBS,
            "max_tokens": 3,
            "temperature": 0.0,
            "logprobs": 0,
            "return_token_ids": True,
        },
    )
    assert status == 200, body
    assert body["object"] == "text_completion" and body["model"] == "step_0000007"
    (choice,) = body["choices"]
    ids = choice["token_ids"]
    assert choice["index"] == 0 and 1 <= len(ids) <= 3
    assert choice["text"] == tok.decode(ids, skip_special_tokens=True)
    assert choice["finish_reason"] == ("length" if len(ids) == 3 else "stop")
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(ids)
    assert all(x <= 0 for x in lp["token_logprobs"])
    assert choice["prompt_token_ids"] == tok(OBS).input_ids
    assert body["usage"] == {
        "prompt_tokens": len(tok(OBS).input_ids),
        "completion_tokens": len(ids),
        "total_tokens": len(tok(OBS).input_ids) + len(ids),
    }


@pytest.mark.integration
def test_prompt_list_gets_one_choice_each_and_summed_usage(server):
    url, _, tok = server
    prompts = [OBS, "kuhn K pb:"]
    status, body = call(f"{url}/v1/completions", {"prompt": prompts, "max_tokens": 2, "temperature": 0.0})
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["logprobs"] is None for c in body["choices"])
    usage = body["usage"]
    assert usage["prompt_tokens"] == sum(len(tok(p).input_ids) for p in prompts)
    assert 2 <= usage["completion_tokens"] <= 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.integration
def test_chat_without_template_prompts_the_concatenated_contents(server):
    url, _, tok = server
    assert tok.chat_template is None
    greedy = {"max_tokens": 3, "temperature": 0.0, "return_token_ids": True}
    status, chat = call(
        f"{url}/v1/chat/completions",
        {
            "messages": [
                {"role": "system", "content": "tictactoe X "},
                {"role": "user", "content": "123456789:"},
            ],
            "logprobs": True,
            **greedy,
        },
    )
    assert status == 200, chat
    assert chat["object"] == "chat.completion"
    (choice,) = chat["choices"]
    assert choice["prompt_token_ids"] == tok(OBS).input_ids
    assert choice["message"]["role"] == "assistant"
    assert len(choice["logprobs"]["content"]) == len(choice["token_ids"])
    _, plain = call(f"{url}/v1/completions", {"prompt": OBS, **greedy})
    assert choice["message"]["content"] == plain["choices"][0]["text"]
    assert chat["usage"] == plain["usage"]


@pytest.mark.integration
def test_stop_string_ends_the_completion(server):
    url, _, _ = server
    greedy = {"prompt": OBS, "max_tokens": 8, "temperature": 0.0}
    _, free = call(f"{url}/v1/completions", greedy)
    text = free["choices"][0]["text"]
    assert len(text) >= 2, free  # the tiny model's greedy reply (seeded weights) is long enough
    status, stopped = call(f"{url}/v1/completions", {**greedy, "stop": [text[1]]})
    assert status == 200, stopped
    assert stopped["choices"][0]["text"] == text[: text.index(text[1])]
    assert stopped["choices"][0]["finish_reason"] == "stop"


@pytest.mark.integration
def test_concurrent_requests_share_engine_calls(server):
    url, handle, _ = server
    before = handle.stats.remote().result()
    n = 12
    results = [None] * n
    start = threading.Barrier(n)

    def one(i: int) -> None:
        start.wait()
        results[i] = call(f"{url}/v1/completions", {"prompt": OBS, "max_tokens": 3})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = handle.stats.remote().result()
    assert [status for status, _ in results] == [200] * n
    assert after["requests"] - before["requests"] == n
    assert after["engine_calls"] - before["engine_calls"] < n


BAD = [  # (path, body, the field the error must name)
    ("completions", {"model": "gpt-4", "prompt": OBS}, "model"),
    ("completions", {"prompt": OBS, "n": 2}, "n"),
    ("completions", {"prompt": "x" * 100}, "prompt"),
    ("completions", {"max_tokens": 2}, "prompt"),
    ("completions", {"prompt": ""}, "prompt"),
    ("completions", {"prompt": [1, 2, 3]}, "prompt"),
    ("completions", {"prompt": OBS, "max_tokens": 60}, "max_tokens"),
    ("completions", {"prompt": OBS, "max_tokens": "3"}, "max_tokens"),
    ("completions", {"prompt": OBS, "temperature": -1}, "temperature"),
    ("completions", {"prompt": OBS, "stream": True}, "stream"),
    ("completions", {"prompt": OBS, "top_k": 5}, "top_k"),
    ("completions", {"prompt": OBS, "stop": [""]}, "stop"),
    ("completions", {"prompt": OBS, "stop": ["x" * 257]}, "stop"),
    ("completions", {"prompt": "x" * 2001}, "prompt"),  # max_prompt_chars, before tokenising
    ("completions", {"prompt": ["x" * 1000, "y" * 1001]}, "prompt"),
    ("chat/completions", {"messages": [{"role": "user", "content": "x" * 2001}]}, "messages"),
    ("completions", [OBS], "body"),
    ("chat/completions", {"messages": []}, "messages"),
    ("chat/completions", {"messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
    ("chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
]


@pytest.mark.integration
def test_bad_requests_get_400_naming_the_field_and_the_replica_keeps_answering(server):
    url, _, _ = server
    for path, body, param in BAD:
        status, answer = call(f"{url}/v1/{path}", body)
        assert status == 400, (body, answer)
        assert answer["error"]["param"] == param, (body, answer)
        assert answer["error"]["message"].startswith(f"{param}: "), answer
    status, answer = call(f"{url}/v1/completions", raw=b"{not json")
    assert (status, answer["error"]["param"]) == (400, "body")
    status, answer = call(f"{url}/v1/completions", {"prompt": OBS, "max_tokens": 1})
    assert status == 200 and len(answer["choices"]) == 1


@pytest.mark.integration
def test_a_server_with_a_key_answers_only_its_bearer(server):
    url, _, _ = server
    for key in (None, "wrong"):
        for path, body in (("models", None), ("completions", {"prompt": OBS, "max_tokens": 1})):
            status, answer = call(f"{url}/v1/{path}", body, key=key)
            assert status == 401 and answer["error"]["code"] == "invalid_api_key", (key, path, answer)
    assert call(f"{url}/v1/models")[0] == 200


@pytest.mark.integration
def test_a_body_over_the_limit_is_refused_before_it_is_parsed(server):
    url, _, _ = server
    big = json.dumps({"prompt": OBS, "pad": "x" * 70000}).encode()
    status, answer = call(f"{url}/v1/completions", raw=big)
    assert (status, answer["error"]["param"]) == (413, "body"), answer
    # the same body without a Content-Length (chunked): refused while it streams in
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    chunks = (big[i : i + 8192] for i in range(0, len(big), 8192))
    conn.request(
        "POST",
        "/v1/completions",
        body=chunks,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["param"] == "body"
    conn.close()
    assert call(f"{url}/v1/completions", {"prompt": OBS, "max_tokens": 1})[0] == 200


def test_a_nan_number_is_refused_naming_its_field():

    body = json.loads('{"temperature": NaN, "top_p": Infinity}')  # Python's JSON reads both
    with pytest.raises(BadRequest, match="must be in") as err:
        _number(body, "temperature", 1.0, 0.0, 2.0)
    assert err.value.param == "temperature" and err.value.status == 400
    with pytest.raises(BadRequest, match="must be in"):
        _number(body, "top_p", 1.0, 0.0)
    assert _number({"temperature": 0.5}, "temperature", 1.0, 0.0, 2.0) == 0.5


def test_inputs_that_made_a_plain_text_500_are_400s_naming_their_field():
    """A 400-digit max_tokens (math.isfinite overflowed), `stop: []` (valid for OpenAI: none),
    a body nested 100,000 deep (RecursionError), answered as Starlette's text 500."""
    import asyncio
    import types

    from actors.serve import _stop, read_json

    with pytest.raises(BadRequest, match="max_tokens: must be in") as err:
        _number({"max_tokens": 10**400}, "max_tokens", 16, 1, 64, integer=True)
    assert err.value.status == 400
    assert _stop({"stop": []}) == []

    async def stream():
        yield b"[" * 100_000

    request = types.SimpleNamespace(headers={}, stream=stream)
    with pytest.raises(BadRequest, match="body: not valid JSON"):
        asyncio.run(read_json(request, 1 << 20))


def test_the_bearer_check_compares_digests_and_names_what_is_missing():
    digest = key_digest("s3cret")
    authorize("Bearer s3cret", digest)
    authorize("bearer  s3cret ", digest)
    authorize(None, None)  # no key: anyone
    for header, message in (
        (None, "missing"),
        ("Basic s3cret", "missing"),
        ("Bearer ", "missing"),
        ("Bearer s3cre", "invalid"),
    ):
        with pytest.raises(BadRequest, match=message) as err:
            authorize(header, digest)
        assert err.value.status == 401


def test_serve_refuses_a_key_in_place_of_its_digest_and_a_public_host_without_a_key(monkeypatch, tmp_path):
    from selfplay.cli import api_key, build_parser

    with pytest.raises(ConfigError, match="api_key_sha256: expected the key's SHA-256"):
        serve_config({"checkpoint": "runs/x", "api_key_sha256": "s3cret"})
    monkeypatch.delenv("SELFPLAY_API_KEY", raising=False)
    args = build_parser().parse_args(["serve", "--checkpoint", "x", "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="--host 0.0.0.0: listening beyond loopback needs an API key"):
        api_key(args)
    (tmp_path / "key").write_text("s3cret\n")
    args = build_parser().parse_args(
        ["serve", "--checkpoint", "x", "--host", "0.0.0.0", "--api-key-file", str(tmp_path / "key")]
    )
    assert api_key(args) == "s3cret"
    monkeypatch.setenv("SELFPLAY_API_KEY", "from-env")
    assert api_key(build_parser().parse_args(["serve", "--checkpoint", "x"])) == "from-env"


def test_serve_args_name_a_bad_field():
    with pytest.raises(ConfigError, match="num_gpu: unknown field"):
        serve_config({"checkpoint": "runs/x", "num_gpu": 1})
    with pytest.raises(ConfigError, match="checkpoint: required"):
        serve_config({})
    with pytest.raises(ConfigError, match="dtype: must be one of"):
        serve_config({"checkpoint": "runs/x", "dtype": "int4"})
    with pytest.raises(ConfigError, match="max_batch_size: must be > 0"):
        serve_config({"checkpoint": "runs/x", "max_batch_size": 0})


def test_serve_run_string_args_are_typed():
    """`serve run actors.serve:build_app key=value` passes strings."""
    cfg = serve_config(
        {
            "checkpoint": "runs/x",
            "model_name": "007",
            "max_model_len": "1024",
            "num_gpus": "1",
            "enforce_eager": "true",
            "resources": "{generator: 1}",
        }
    )
    assert (cfg.model_name, cfg.max_model_len, cfg.num_gpus, cfg.enforce_eager, cfg.resources) == (
        "007",
        1024,
        1.0,
        True,
        {"generator": 1.0},
    )


def test_serve_yaml_is_a_valid_local_only_serve_config():
    from ray.serve.schema import ServeDeploySchema

    text = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "serve.yaml").read_text())
    config = ServeDeploySchema.model_validate(text)
    assert config.http_options.host == "127.0.0.1"
    (app,) = config.applications
    assert app.import_path == "actors.serve:build_app"
    cfg = serve_config(app.args)
    assert cfg.checkpoint.startswith("/data/runs/") and cfg.num_gpus == 1
    build_app(app.args)


def test_serve_refuses_a_running_proxy_that_listens_elsewhere(server):
    """On a cluster whose Serve proxy is already up, `serve.start` keeps that proxy's host
    and port whatever is asked (a warning in the log): `selfplay serve` asked for loopback
    without a key and served wherever that proxy listened. It reads the running proxy's
    options and refuses a mismatch, and never replaces an app of its name."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from selfplay.cli import APP, check_proxy

    port = int(server[0].rsplit(":", 1)[1])
    serve.start(http_options={"host": "0.0.0.0", "port": port + 1})  # ignored: the proxy is up
    proxy = _get_global_client().http_config
    assert (proxy.host, proxy.port) == ("127.0.0.1", port)
    with pytest.raises(ConfigError, match=rf"already listens on 127.0.0.1:{port}, not 0.0.0.0:{port + 1}"):
        check_proxy(("0.0.0.0", port + 1), (proxy.host, proxy.port))
    check_proxy(("127.0.0.1", port), (proxy.host, proxy.port))
    assert APP in serve.status().applications  # the fixture's app: `selfplay serve` refuses to replace it
    assert call(f"{server[0]}/v1/models")[0] == 200  # and the server still answers


def test_a_developer_message_reaches_the_template_as_the_system_message(tiny_model):
    """OpenAI's developer role is its system role; a template that knows only system, user
    and assistant (Qwen2.5-Instruct's) dropped a developer turn silently. A template that
    refuses the roles' order is a 400, not a 500."""
    from transformers import AutoTokenizer

    from actors.serve import ChatModel

    model = ChatModel.__new__(ChatModel)
    model.tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model.tokenizer.chat_template = (
        "{% for m in messages %}{% if m.role in ['system', 'user', 'assistant'] %}"
        "[{{ m.role }}]{{ m.content }}{% endif %}{% endfor %}"
        "{% if messages[0].role == 'assistant' %}{{ raise_exception('a user speaks first') }}{% endif %}"
    )
    model.max_prompt_chars, model.max_model_len = 2000, 64
    parsed = model.parse_chat(
        {"messages": [{"role": "developer", "content": "brief"}, {"role": "user", "content": "hi"}]}
    )
    assert model.tokenizer.decode(parsed.prompts[0]) == "[system]brief[user]hi"
    with pytest.raises(
        BadRequest, match="messages: the model's chat template refused them: a user speaks first"
    ):
        model.parse_chat({"messages": [{"role": "assistant", "content": "x"}]})
