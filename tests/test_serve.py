"""The OpenAI-compatible Serve app: one deployment (one vLLM engine) on the session's local
Ray, answered over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from actors.serve import build_app, serve_config
from selfplay.config import ConfigError

OBS = "tictactoe X 123456789:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
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
        build_app({"checkpoint": str(checkpoint), "max_batch_size": 16, "enforce_eager": True}),
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
