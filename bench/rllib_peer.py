"""Against RLlib: the classic-RL peer on the same games. RLlib's PPO (its new API stack) plays
OpenSpiel TicTacToe and Kuhn poker against itself through RLlib's own `OpenSpielEnv`, with
an MLP policy on OpenSpiel's observation tensors; ours is the game's demo config (the 1M-
parameter language model reading the board as text, through the generator -> buffer ->
learner actors). Each side trains for at most `--minutes` per game; the figure is the wall
time to the goal: TicTacToe non-loss >= 0.9 against perfect minimax play, Kuhn poker
exploitability <= 0.1.

RLlib, as its self-play example (`rllib/examples/multi_agent/self_play_with_open_spiel.py`)
sets it up, except where stated: PPO with 20 epochs per batch and a [512, 512] MLP (the
example's), its default batch (4,000 env steps), learning rate and 2 env runners; one
module ("main") plays both seats (parameter sharing: the example's league of frozen copies
starts against a random player and grows only once "main" wins 95% of its games, which
TicTacToe's draws and Kuhn's chance never allow). RLlib's `OpenSpielEnv` replaces an
illegal action by a random legal one with a -0.1 penalty while training. Evaluations pause
RLlib's clock (ours run beside training, on generator-0, and are not subtracted).

Both evaluations are ours, on both sides: TicTacToe, 200 games against `MinimaxPlayer`
(uniform among optimal moves), 100 from each seat, the policy greedy; an illegal move loses
the game, as it does for our model (RLlib's own example would swap it for a random legal
one: the illegal share is reported beside). Kuhn poker: the policy's action probabilities
at each of the 12 information states, scored by OpenSpiel's exploitability
(`selfplay.games.kuhn.exploitability`).

    python -m bench.rllib_peer --minutes 2"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import time
from pathlib import Path

from bench.suite import figure, machine, write, write_table
from selfplay.evals import meets

ROOT = Path(__file__).resolve().parent.parent
GAMES = {
    "tictactoe": {
        "spiel": "tic_tac_toe",
        "config": "configs/tictactoe.yaml",
        "metric": "eval/tictactoe/minimax/non_loss",
        "goal": ">= 0.9",
    },
    "kuhn": {
        "spiel": "kuhn_poker",
        "config": "configs/kuhn.yaml",
        "metric": "eval/kuhn/exploitability",
        "goal": "<= 0.1",
    },
}


def first_reaching(points: list[dict], goal: str) -> dict | None:
    """The first point ({seconds, value, ...}, in time order) whose value meets `goal`."""
    return next((p for p in sorted(points, key=lambda p: p["seconds"]) if meets(p["value"], goal)), None)


# ---- The evaluations, for any policy over OpenSpiel states ------------------------------
def tictactoe_vs_minimax(act, games: int = 200, seed: int = 0, swap_illegal: bool = False) -> dict:
    """`act(state) -> action` (an OpenSpiel tic_tac_toe state) against our MinimaxPlayer,
    `games` games, the seats alternating. An illegal action loses the game (our rule), or
    with `swap_illegal` is replaced by a random legal one (RLlib's example's rule). Non-loss,
    win and illegal shares (illegal: of games, an illegal action at least once)."""
    import pyspiel

    from selfplay.games.tictactoe import MinimaxPlayer, TicTacToe

    game = pyspiel.load_game("tic_tac_toe")
    minimax, rng = MinimaxPlayer(seed), random.Random(seed)
    non_loss = wins = illegal = 0
    for g in range(games):
        seat, erred = g % 2, False
        ours, state = TicTacToe(), game.new_initial_state()
        while not ours.is_terminal:
            if ours.current_player == seat:
                action = int(act(state))
                if action not in ours.legal_actions():
                    erred = True
                    if not swap_illegal:
                        ours.illegal_by = seat
                        break
                    action = rng.choice(ours.legal_actions())
            else:
                action = minimax.act(ours)
            ours.apply(action)
            state.apply_action(action)
        illegal += erred
        outcome = ours.returns()[seat]
        non_loss += outcome >= 0
        wins += outcome > 0
    return {"non_loss": non_loss / games, "win": wins / games, "illegal": illegal / games}


def kuhn_policy(probs) -> dict[str, list[float]]:
    """`probs(state) -> [p_pass, p_bet]` at every decision of OpenSpiel's kuhn_poker, as the
    info-state table `selfplay.games.kuhn.exploitability` reads."""
    import pyspiel

    table: dict[str, list[float]] = {}
    stack = [pyspiel.load_game("kuhn_poker").new_initial_state()]
    while stack:
        state = stack.pop()
        if state.is_terminal():
            continue
        if state.is_chance_node():
            stack += [state.child(a) for a, _ in state.chance_outcomes()]
            continue
        key = state.information_state_string()
        if key not in table:
            table[key] = [float(p) for p in probs(state)]
        stack += [state.child(a) for a in state.legal_actions()]
    return table


def evaluate(game: str, logits, seed: int) -> dict:
    """One evaluation of a policy given by `logits(observation tensor) -> list[float]`:
    greedy in TicTacToe, its softmax in Kuhn poker. `value` is the goal's figure."""
    if game == "tictactoe":

        def greedy(state) -> int:
            z = logits(state.observation_tensor())
            return max(range(len(z)), key=z.__getitem__)

        result = tictactoe_vs_minimax(greedy, seed=seed)
        swapped = tictactoe_vs_minimax(greedy, seed=seed, swap_illegal=True)
        return {"value": result["non_loss"], **result, **{f"swapped_{k}": v for k, v in swapped.items()}}
    from selfplay.games import kuhn

    def probs(state) -> list[float]:
        z = logits(state.observation_tensor())
        e = [math.exp(v - max(z)) for v in z]
        return [v / sum(e) for v in e]

    return {"value": kuhn.exploitability(kuhn_policy(probs))}


# ---- RLlib's side --------------------------------------------------------------------------
def rllib_config(game: str, seed: int):
    import pyspiel
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.env.wrappers.open_spiel import OpenSpielEnv
    from ray.tune.registry import register_env

    name = f"open_spiel_{game}"
    register_env(name, lambda _: OpenSpielEnv(pyspiel.load_game(GAMES[game]["spiel"])))
    return (
        PPOConfig()
        .environment(name)
        .multi_agent(policies={"main"}, policy_mapping_fn=lambda agent_id, episode, **kw: "main")
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[512, 512]))
        .training(num_epochs=20)
        .debugging(seed=seed)
    )


def module_logits(module):
    """`logits(observation tensor) -> list[float]` of an RLlib module, as `evaluate` reads."""
    import torch

    def logits(obs) -> list[float]:
        with torch.no_grad():
            out = module.forward_inference({"obs": torch.tensor([obs], dtype=torch.float32)})
        return out["action_dist_inputs"][0].tolist()

    return logits


def run_rllib(game: str, seconds: float, seed: int, eval_every: float) -> list[dict]:
    """RLlib PPO self-play for `seconds` of training (its clock paused while evaluating),
    evaluated every `eval_every` seconds; stops early once the goal is met."""
    import ray
    import torch

    from selfplay.files import local_ray_auth

    local_ray_auth()
    ray.init(num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False)
    points: list[dict] = []
    try:
        # RLlib's learner trains in this process (num_learners 0) on torch's thread count, which
        # an earlier benchmark of `make bench` left at 1 (and an in-process engine made torch's
        # setter a no-op): every core, as ours has learner.threads
        torch._C.set_num_threads(len(os.sched_getaffinity(0)))
        algo = rllib_config(game, seed).build_algo()
        # the clock starts once it is built, as ours starts once its engines are up
        trained, next_eval, steps = 0.0, 0.0, 0
        while True:
            if trained >= next_eval or trained >= seconds:
                result = evaluate(game, module_logits(algo.get_module("main")), seed)
                points.append({"seconds": trained, "env_steps": steps, **result})
                next_eval = trained + eval_every
                if meets(result["value"], GAMES[game]["goal"]) or trained >= seconds:
                    break
            t = time.perf_counter()
            info = algo.train()
            trained += time.perf_counter() - t
            steps = int(info.get("env_runners", {}).get("num_env_steps_sampled_lifetime", steps))
        algo.stop()
    finally:
        ray.shutdown()
    return points


# ---- Ours ----------------------------------------------------------------------------------
def run_ours(game: str, seconds: float, seed: int, out_dir: Path) -> list[dict]:
    """The game's demo config for `seconds` (periodic evaluations as configured), stopped
    early once an evaluation meets the goal, a new run in OUT_DIR/ours-GAME (kept until the
    next); its evaluation curve as (seconds since the run started, value)."""
    import pyarrow.parquet as pq

    from selfplay import driver
    from selfplay.config import load_config

    shutil.rmtree(out_dir / f"ours-{game}", ignore_errors=True)  # a new run, not a resumed one
    sets = [f"out_dir={out_dir}", f"time_limit_min={seconds / 60}", f"seed={seed}"]
    sets.append(f'stop_when.{GAMES[game]["metric"]}="{GAMES[game]["goal"]}"')  # as RLlib's side stops
    run_dir = driver.train(load_config(ROOT / GAMES[game]["config"], sets), name=f"ours-{game}")
    rows = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    return [
        {"seconds": r["wall_s"], "step": r["step"], "value": r["value"]}
        for r in rows
        if r["name"] == GAMES[game]["metric"]
    ]


def outcome(reached: dict | None, points: list[dict], goal: str, minutes: float) -> str:
    """How one side did: its seconds to the goal, or its best value in the time it had."""
    if reached:
        return f"{reached['seconds']:.0f} s"
    best = (min if goal.startswith("<") else max)((q["value"] for q in points), default=None)
    return f"not in {minutes:g} min (best {best if best is None else round(best, 3)})"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0, help="each side's training time per game, at most")
    p.add_argument(
        "--eval-every", type=float, default=30.0, help="RLlib: seconds of training between evaluations"
    )
    p.add_argument("--games", default=",".join(GAMES), help=f"a subset of {','.join(GAMES)}")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    facts = machine()
    figures, curves = {}, {}
    for game in args.games.split(","):
        goal = GAMES[game]["goal"]
        rllib = run_rllib(game, args.minutes * 60, args.seed, args.eval_every)
        ours = run_ours(game, args.minutes * 60, args.seed, ROOT / "runs" / "bench-rllib")
        curves[game] = {"rllib": rllib, "ours": ours}
        reached = {side: first_reaching(points, goal) for side, points in curves[game].items()}
        said = {
            side: outcome(reached[side], points, goal, args.minutes) for side, points in curves[game].items()
        }
        note = f"{goal}: ours {said['ours']}, RLlib {said['rllib']}"
        ratio = reached["ours"]["seconds"] / reached["rllib"]["seconds"] if all(reached.values()) else None
        figures[f"{game}_time_to_goal_vs_rllib"] = figure(ratio, None, note=note)
        print(f"rllib {game}: {note}")
    write("rllib", figures, facts, minutes=args.minutes, seed=args.seed, curves=curves)
    write_table()
    return curves


if __name__ == "__main__":
    main()
