"""`selfplay` console script: run, eval, league, report."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from selfplay import jobs
from selfplay.config import ConfigError, load_config, string_override
from selfplay.procs import Descendants, local_ray_lost


def cmd_run(args) -> int:
    if args.resume:
        from selfplay import driver

        resume = Path(args.resume).resolve()
        cfg = driver.resume_config(resume, args.set)
        cfg = replace(cfg, out_dir=jobs.leave_job_working_dir(cfg.out_dir))
        run_dir = driver.train(cfg, resume_dir=resume, console=True)
    else:
        if not args.config:
            raise ConfigError("run: give a CONFIG file or --resume RUN_DIR")
        overrides = list(args.set) + ([string_override("ray.address", args.address)] if args.address else [])
        name = jobs.check_name(args.name) if args.name else None
        cfg = load_config(args.config, overrides)  # a bad field fails in a second, before torch loads
        cfg = replace(cfg, out_dir=jobs.leave_job_working_dir(cfg.out_dir))
        from selfplay import driver

        run_dir = driver.train(cfg, name=name, console=True)
    from selfplay.console import result_lines
    from selfplay.report import write_report

    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"run finished: {run_dir}")
    print("\n".join(["evaluation (before -> after):", *result_lines(summary)]))
    print(f"summary: {run_dir / 'summary.json'}\nreport:  {write_report(run_dir)}")
    return 0


def cmd_submit(args) -> int:
    env_vars = dict(parse_pair(p, "--env") for p in args.env)
    name = jobs.submit(
        args.config, args.name, args.set, args.address, args.storage, env_vars, args.pip, args.image
    )
    address = jobs.job_address(args.address)
    print(
        f"submitted run {name} to {address}\n"
        f"  dashboard: {address}/#/jobs/{name}\n"
        f"  follow:    selfplay logs {name} --follow\n"
        f"  scale:     selfplay scale {name} --generators N\n"
        f"  stop:      selfplay stop {name}",
        flush=True,
    )
    if args.follow:
        state = jobs.follow(name, args.address)
        print(f"run {name}: {state}")
        return 0 if state == "SUCCEEDED" else 1
    return 0


def parse_pair(text: str, flag: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key, value


def cmd_status(args) -> int:
    print(json.dumps(jobs.status(args.run, args.address), indent=2))
    return 0


def cmd_logs(args) -> int:
    if args.follow:  # as `submit --follow`: 1 unless the job succeeded, so a script stops
        state = jobs.follow(args.run, args.address)
        print(f"run {args.run}: {state}")
        return 0 if state == "SUCCEEDED" else 1
    print(jobs.logs(args.run, args.address), end="")
    return 0


def cmd_stop(args) -> int:
    state = jobs.stop(args.run, args.address)
    print(f"run {args.run}: {state}")
    return 0 if state in jobs.TERMINAL else 1


def cmd_scale(args) -> int:
    if args.in_cluster:  # inside the scale job that jobs.scale submits
        import ray

        ray.init(namespace=args.run, logging_level="ERROR")
        print(
            jobs.RESULT + json.dumps(jobs.scale_connected(args.run, args.generators, args.timeout)),
            flush=True,
        )
        return 0
    print(json.dumps(jobs.scale(args.run, args.generators, args.address, args.timeout), indent=2))
    return 0


def trained_with_skill_prompts(checkpoint: str) -> bool:
    """Whether the run that wrote `checkpoint` (RUN_DIR/checkpoints/step_N, its model/ or
    averaged/, RUN_DIR/best) set generator.skill_prompts: its policy then reads each
    observation after the opponent's tier token, and was measured so in the run (evaluated
    without it, the figures differed from the run's own). False for a model directory of no
    run."""
    from selfplay.config import load_config

    path = Path(checkpoint).resolve()
    for run_dir in (path.parent, path.parent.parent, path.parent.parent.parent):
        if (run_dir / "config.yaml").exists() and (run_dir / "checkpoints").is_dir():
            return load_config(run_dir / "config.yaml").generator.skill_prompts
    return False


def greedy_tictactoe(checkpoint: str, prefix: str = ""):
    """(board, player) -> the cell a checkpoint plays greedily, masked to the free cells as
    a run with generator.legal_moves_only draws (`selfplay eval --exact`): transformers in
    float32 on the CPU, no engine, each position scored once; `prefix` before each
    observation (a skill token)."""
    import functools

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.games.tictactoe import TicTacToe

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    cells = [tokenizer(TicTacToe.action_text(a), add_special_tokens=False).input_ids for a in range(9)]
    if any(len(ids) != 1 for ids in cells):
        raise ConfigError(
            f"eval --exact: {checkpoint}'s tokenizer spells a TicTacToe move in more than one token"
        )

    @functools.cache
    def policy(board: str, player: int) -> int:
        game = TicTacToe()
        game.board, game.current_player = board, player
        with torch.no_grad():
            logits = model(torch.tensor([tokenizer(prefix + game.observation(player)).input_ids])).logits[
                0, -1
            ]
        return max(game.legal_actions(), key=lambda a: logits[cells[a][0]].item())

    return policy


def eval_inputs(args) -> tuple[str, str | None]:
    """`selfplay eval`'s model directories (the checkpoint's, a model opponent's or None),
    every argument checked first, in one line each (an unknown game, an opponent path that is
    not a model, `--max-tokens 0` or `--games -5` came after an engine had started, some as
    tracebacks). A model opponent reads the checkpoint's token ids: its tokenizer must be the
    same (another model family's played on garbage)."""
    from selfplay.games import scripted_players
    from selfplay.model import model_dir

    try:
        scripted = scripted_players(args.game)
    except ValueError as err:
        raise ConfigError(f"--game: {err}") from None
    for flag, value in (("--games", args.games), ("--max-tokens", args.max_tokens)):
        if value < 1:
            raise ConfigError(f"{flag}: at least 1, got {value}")
    checkpoint = model_dir(args.checkpoint)
    if args.opponent in scripted:
        return checkpoint, None
    opponent = model_dir(args.opponent)
    from selfplay.text import text_codec

    probe = "".join(chr(c) for c in range(32, 127)) + "\n"  # every character a game prompt uses
    if text_codec(checkpoint)[0](probe) != text_codec(opponent)[0](probe):
        raise ConfigError(
            f"--opponent {args.opponent}: its tokenizer is not the checkpoint's; prompts are encoded once, "
            "with the checkpoint's, for both"
        )
    return checkpoint, opponent


def cmd_eval(args) -> int:
    if args.exact:
        from selfplay.evals import exact_summary
        from selfplay.model import model_dir

        if args.game != "tictactoe" or args.opponent not in ("minimax", "random"):
            raise ConfigError(
                f"eval --exact: TicTacToe against minimax or random only, got {args.game} against {args.opponent}"
            )
        from selfplay.league import SKILL_TOKENS, scripted_tier

        skilled = trained_with_skill_prompts(args.checkpoint)
        prefix = SKILL_TOKENS[scripted_tier(args.opponent)] if skilled else ""
        result = exact_summary(greedy_tictactoe(model_dir(args.checkpoint), prefix), args.opponent)
        print(json.dumps(result) if args.json else "  ".join(f"{k}={v}" for k, v in result.items()))
        return 0
    from actors.generator import Generator
    from selfplay.config import GeneratorConfig, ModelConfig
    from selfplay.games import kuhn

    checkpoint, opponent_dir = eval_inputs(args)  # all checked before an engine starts
    gen = Generator.from_model(
        "eval",
        "eval",
        {args.game: 1.0},
        checkpoint,
        ModelConfig(),
        GeneratorConfig(
            max_response_tokens=1 if args.legal_moves_only else args.max_tokens,
            legal_moves_only=args.legal_moves_only,
            enforce_eager=args.enforce_eager,
            skill_prompts=trained_with_skill_prompts(args.checkpoint),  # as the run measured it
        ),
        args.seed,
    )
    try:
        opponent = args.opponent
        if opponent_dir is not None:
            gen.add_opponent("opponent", opponent_dir)
            opponent = "opponent"
        result = gen.evaluate(args.game, opponent, args.games)
        result["opponent"] = args.opponent
        if args.game == "kuhn":
            result["exploitability"] = kuhn.exploitability(gen.kuhn_policy()["policy"])
    finally:
        gen.close()
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>16}: {v}")
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def api_key(args) -> str | None:
    """The serve API key: --api-key-file's first line, else $SELFPLAY_API_KEY, else None;
    required when the HTTP proxy listens beyond loopback."""
    key = None
    if args.api_key_file:
        key = Path(args.api_key_file).read_text().strip()
        if not key:
            raise ConfigError(f"--api-key-file: {args.api_key_file} is empty")
    key = key or os.environ.get("SELFPLAY_API_KEY") or None
    if key is None and args.host not in LOOPBACK:
        raise ConfigError(
            f"--host {args.host}: listening beyond loopback needs an API key "
            "(--api-key-file FILE or $SELFPLAY_API_KEY); clients send it as 'Authorization: Bearer KEY'"
        )
    return key


APP = "selfplay-model"  # the Serve application `selfplay serve` deploys


def check_proxy(asked: tuple[str, int], listening: tuple[str, int]) -> None:
    """Serve's HTTP proxy keeps the options it started with: on a cluster whose proxy an
    earlier command (or a config file: host 0.0.0.0 by default) started, `serve.start` logs
    a warning and listens where that one does. An app served there without a key, where
    this command asked for loopback, was public. Refused unless it listens where asked."""
    if tuple(listening) != tuple(asked):
        raise ConfigError(
            f"--host/--port: Serve's proxy on this cluster already listens on {listening[0]}:{listening[1]}, "
            f"not {asked[0]}:{asked[1]} (a proxy keeps the options it started with); ask for those "
            "(beyond loopback, with an API key), or shut that Serve down first"
        )


def cmd_serve(args) -> int:
    import ray
    from ray import serve

    from actors.serve import build_app, key_digest
    from selfplay.files import local_ray_auth

    key = api_key(args)
    app = build_app(
        {
            k: v
            for k, v in {
                "checkpoint": args.checkpoint,
                "model_name": args.model_name,
                "max_model_len": args.max_model_len,
                "dtype": args.dtype,
                "num_gpus": args.num_gpus,
                "num_replicas": args.replicas,
                "api_key_sha256": key and key_digest(key),
            }.items()
            if v is not None
        }
    )
    local = not args.address
    started = Descendants()
    if local:
        local_ray_auth()
    ray.init(address=args.address)  # a local Ray's dashboard binds 127.0.0.1
    # SIGTERM ends the command as Ctrl-C does (after ray.init, which installs its own
    # handler); a local Ray this command started goes with it, and with it every process
    # of Serve's (controller, proxy, replica, the replica's engine core)
    signal.signal(signal.SIGTERM, _interrupt)
    if local:
        started.watch(on_lost=local_ray_lost)
    deployed = False
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        from ray.serve.context import _get_global_client

        proxy = _get_global_client().http_config  # the running proxy's, whatever was asked
        check_proxy((args.host, args.port), (proxy.host, proxy.port))
        if APP in serve.status().applications:  # serve.run would replace it, and we delete ours
            raise ConfigError(
                f"an app named {APP!r} already runs on this cluster (serve deploy?); not replaced"
            )
        serve.run(app, name=APP, route_prefix="/", blocking=False)
        deployed = True
        print(f"serving {args.checkpoint} at http://{args.host}:{args.port}/v1 (Ctrl-C stops)", flush=True)
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if local:  # replicas close their engines; what a SIGTERM to the group orphaned is ended
            started.close(lambda: (serve.shutdown(), ray.shutdown()))
        else:
            if deployed:  # on a cluster the app would outlive this command; only ours goes
                serve.delete(APP)
            ray.shutdown()
    return 0


def cmd_league(args) -> int:
    from selfplay.league_table import league_table

    print(league_table(Path(args.run_dir), as_json=args.json))
    return 0


def cmd_report(args) -> int:
    from selfplay.report import write_report

    print(write_report(Path(args.run_dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="selfplay", description="Ray-native LLM self-play training")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train (local Ray, or --address to join a cluster)")
    r.add_argument("config", nargs="?")
    r.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set learner.lr=1e-4",
    )
    r.add_argument("--address", help="Ray address of an existing cluster")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last complete checkpoint")
    r.add_argument("--name", metavar="RUN", help="run directory OUT_DIR/RUN, resumed if it has a checkpoint")
    r.set_defaults(fn=cmd_run)
    address_help = (
        f"Ray dashboard / job server URL (default: $RAY_API_SERVER_ADDRESS or {jobs.DEFAULT_ADDRESS})"
    )
    sb = sub.add_parser("submit", help="run CONFIG as a Ray job on a cluster (same name again: resume)")
    sb.add_argument("config")
    sb.add_argument("--name", required=True, metavar="RUN", help="run name: job id, namespace and directory")
    sb.add_argument("--address", help=address_help)
    sb.add_argument("--storage", metavar="DIR", help="absolute out_dir on storage every node mounts")
    sb.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    sb.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="env var for the job")
    sb.add_argument(
        "--pip", action="append", default=[], metavar="REQ", help="pip requirement installed for the job"
    )
    sb.add_argument("--image", help="container image for the job (runtime_env image_uri)")
    sb.add_argument("--follow", action="store_true", help="stream the logs until the run ends")
    sb.set_defaults(fn=cmd_submit)
    for verb, fn, text in (
        ("status", cmd_status, "a run's job status"),
        ("logs", cmd_logs, "a run's logs"),
        ("stop", cmd_stop, "stop a run's job (checkpoints stay; resubmit resumes)"),
    ):
        v = sub.add_parser(verb, help=text)
        v.add_argument("run")
        v.add_argument("--address", help=address_help)
        if verb == "logs":
            v.add_argument("--follow", action="store_true")
        v.set_defaults(fn=fn)
    sc = sub.add_parser("scale", help="grow or shrink a running run's generator pool")
    sc.add_argument("run")
    sc.add_argument("--generators", type=int, required=True, metavar="N")
    sc.add_argument("--address", help=address_help)
    sc.add_argument("--timeout", type=float, default=600, help="seconds new generators may take to start")
    sc.add_argument("--in-cluster", action="store_true", help=argparse.SUPPRESS)
    sc.set_defaults(fn=cmd_scale)
    e = sub.add_parser("eval", help="play a checkpoint against an opponent")
    e.add_argument("--checkpoint", required=True, help="HF model dir or checkpoint dir")
    e.add_argument("--game", default="tictactoe", help="tictactoe, kuhn, negotiation or textarena:ENV_ID")
    e.add_argument(
        "--opponent",
        default="random",
        help="a scripted player of the game (e.g. random, minimax, nash, greedy, fair) "
        "or a model/checkpoint dir",
    )
    e.add_argument("--max-tokens", type=int, default=3, help="reply length limit in tokens")
    e.add_argument(
        "--legal-moves-only",
        action="store_true",
        help="draw each move from the legal moves' tokens, as a run with generator.legal_moves_only plays",
    )
    e.add_argument(
        "--exact",
        action="store_true",
        help="TicTacToe against minimax or random: greedy play masked to the free cells (transformers, "
        "float32, no engine), non-loss over every game the opponent can play, without sampling noise",
    )
    e.add_argument("--games", type=int, default=100, help="games in each seat")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true")
    e.add_argument(
        "--enforce-eager",
        action="store_true",
        help="skip vLLM's graph compilation: faster start, slower generation",
    )
    e.set_defaults(fn=cmd_eval)
    sv = sub.add_parser("serve", help="serve a checkpoint behind an OpenAI-compatible API (Ray Serve + vLLM)")
    sv.add_argument("--checkpoint", required=True, help="HF model dir or checkpoint dir")
    sv.add_argument("--model-name", help="the `model` clients send (default: the checkpoint dir's name)")
    sv.add_argument("--max-model-len", type=int)
    sv.add_argument("--dtype", default="auto")
    sv.add_argument("--num-gpus", type=float, default=0.0, help="per replica")
    sv.add_argument("--replicas", type=int, default=1)
    sv.add_argument("--host", default="127.0.0.1", help="where the HTTP proxy listens")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--address", help="Ray cluster to deploy on (default: a local Ray)")
    sv.add_argument(
        "--api-key-file",
        help="a file holding the API key clients must send as 'Authorization: Bearer KEY' "
        "(else $SELFPLAY_API_KEY; required with a --host beyond loopback)",
    )
    sv.set_defaults(fn=cmd_serve)
    lg = sub.add_parser("league", help="print a run's league: members, Elo, games, head-to-head")
    lg.add_argument("run_dir")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(fn=cmd_league)
    rep = sub.add_parser("report", help="write report/ (Markdown, HTML, PNG plots) for a run")
    rep.add_argument("run_dir")
    rep.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout stays parseable (--json)
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, jobs.JobError) as err:
        print(f"selfplay: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
