"""`selfplay` console script: run, eval, league, report."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from selfplay.config import ConfigError, load_config


def model_dir(path: str) -> str:
    """Accept an HF model directory or a checkpoint directory holding one in model/."""
    p = Path(path)
    for candidate in (p, p / "model"):
        if (candidate / "config.json").exists():
            return str(candidate)
    raise FileNotFoundError(f"{path}: neither an HF model directory nor a checkpoint with model/")


def cmd_run(args) -> int:
    from selfplay import driver
    if args.resume:
        cfg = driver.resume_config(Path(args.resume), args.set)
        run_dir = driver.run(cfg, resume_dir=Path(args.resume))
    else:
        if not args.config:
            raise ConfigError("run: give a CONFIG file or --resume RUN_DIR")
        overrides = list(args.set) + ([f"ray.address={args.address}"] if args.address else [])
        run_dir = driver.run(load_config(args.config, overrides))
    from selfplay.report import write_report
    print(f"run finished: {run_dir}")
    print((run_dir / "summary.json").read_text())
    print(f"report: {write_report(run_dir)}")
    return 0


def cmd_eval(args) -> int:
    from actors.generator import Generator
    from selfplay.config import GeneratorConfig, ModelConfig
    from selfplay.games import kuhn, scripted_players
    gen = Generator("eval", "eval", {args.game: 1.0}, model_dir(args.checkpoint), ModelConfig(),
                    GeneratorConfig(max_response_tokens=args.max_tokens), args.seed)
    try:
        opponent = args.opponent
        if opponent not in scripted_players(args.game):
            gen.add_opponent("opponent", model_dir(opponent))
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


def cmd_league(args) -> int:
    from selfplay.league_table import league_table
    print(league_table(Path(args.run_dir), as_json=args.json))
    return 0


def cmd_report(args) -> int:
    from selfplay.report import write_report
    print(write_report(Path(args.run_dir)))
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout stays parseable (--json)
    p = argparse.ArgumentParser(prog="selfplay", description="Ray-native LLM self-play training")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train (local Ray, or --address to join a cluster)")
    r.add_argument("config", nargs="?")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set learner.lr=1e-4")
    r.add_argument("--address", help="Ray address of an existing cluster")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last complete checkpoint")
    r.set_defaults(fn=cmd_run)
    e = sub.add_parser("eval", help="play a checkpoint against an opponent")
    e.add_argument("--checkpoint", required=True, help="HF model dir or checkpoint dir")
    e.add_argument("--game", default="tictactoe", help="tictactoe, kuhn, negotiation or textarena:ENV_ID")
    e.add_argument("--opponent", default="random",
                   help="a scripted player of the game (e.g. random, minimax, nash, greedy, fair) "
                        "or a model/checkpoint dir")
    e.add_argument("--max-tokens", type=int, default=3, help="reply length limit in tokens")
    e.add_argument("--games", type=int, default=100, help="games in each seat")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_eval)
    lg = sub.add_parser("league", help="print a run's league: members, Elo, games, head-to-head")
    lg.add_argument("run_dir")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(fn=cmd_league)
    rep = sub.add_parser("report", help="write report/ (Markdown, HTML, PNG plots) for a run")
    rep.add_argument("run_dir")
    rep.set_defaults(fn=cmd_report)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"selfplay: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
