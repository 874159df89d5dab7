"""TicTacToe's ceiling on this machine (`make bench` figure `ceiling`): how many learner
steps the demo's model needs to hold perfect play to a draw when it is told every answer.

The demo's policy must find good moves by self-play. Here the same learner
(`Learner.train_step` on `configs/tictactoe.yaml`'s model preset, batch size and bf16
autocast) trains on perfect labels instead: each step a batch of positions drawn uniformly
from all 4,520 where someone is to move, each labelled with one of its minimax-optimal
moves (`selfplay.games.tictactoe.optimal_moves`; `--labels one`, the default: the lowest
such cell, the same answer every time, the easiest target; `any`: one at random each time,
as minimax plays), the NLL of that move's token (rows labelled sft, as a task run's
supervised stage trains; no value head, as nothing here has a return to predict), at lr
1e-3 (the demo's policy gradient runs at 3e-4; in one trial at 3e-3 the loss stalled near
1.2 for 1,500 steps). Every `--eval-every` steps the greedy policy plays the rllib peer's
evaluation: 200 games against `MinimaxPlayer`, 100 per seat, an illegal move loses.

A self-play signal is far noisier than the answers (though it needs only the positions
its games reach, not all of them), so the steps this needs to reach the demo's goal
(non-loss >= 0.9 against minimax; `first`, and `held`: from then on at every evaluation)
say roughly how far the learner steps the demo's 15 minutes allow fall short: a yardstick,
not a proof. No goal: it says what limits the demo, and how far a lever must move it.

    .venv/bin/python -m bench.ceiling --steps 1500"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from bench.rllib_peer import tictactoe_vs_minimax
from bench.suite import RESULTS, figure, machine, write
from learner.learner import Learner
from selfplay import schema
from selfplay.config import load_config
from selfplay.evals import meets
from selfplay.games.tictactoe import MARKS, TicTacToe, optimal_moves
from selfplay.model import create_default_model

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "tictactoe.yaml"
GOAL = ">= 0.9"  # the demo's: non-loss against minimax


def board_of(history: list[int]) -> tuple[str, int]:
    """(board, player to move) after OpenSpiel's tic_tac_toe action history (X first)."""
    board = ["."] * 9
    for i, action in enumerate(history):
        board[action] = MARKS[i % 2]
    return "".join(board), len(history) % 2


def label_rows(
    positions: list[tuple[str, int]], labels: dict, prompts: dict, move_ids: list[int], rng, one: bool
) -> list:
    """One sft row per position: its prompt and one of its optimal moves: the lowest cell
    (`one`: the same answer every time) or one drawn by `rng`."""
    rows = []
    for board, player in positions:
        move = labels[board, player][0] if one else rng.choice(labels[board, player])
        rows.append(
            {
                "traj_id": f"{board}{player}",
                "game": "tictactoe",
                "role": player,
                "turn": 0,
                "policy_version": 0,
                "opponent_id": "minimax",
                "prompt_ids": prompts[board, player],
                "response_ids": [move_ids[move]],
                "behaviour_logprobs": [0.0],
                "response_text": TicTacToe.action_text(move),
                "reward": 1.0,
                "ret": 1.0,
                "outcome": 1.0,
                "illegal": False,
                "trainable": True,
                "label": "sft",
            }
        )
    return rows


@torch.no_grad()
def greedy_moves(learner: Learner, positions: list, prompts: dict, move_ids: list[int]) -> dict:
    """The greedy reply at every position, as a cell (0-8), or -1 for any token that is not a
    cell's digit (an illegal reply). Every prompt has the same length, one batch per 1,024."""
    token_cell = {t: i for i, t in enumerate(move_ids)}
    model = learner.model
    model.eval()
    replies = {}
    try:
        for start in range(0, len(positions), 1024):
            chunk = positions[start : start + 1024]
            ids = torch.tensor([prompts[p] for p in chunk], device=learner.device)
            with learner._compute({"input_ids": ids}):
                tokens = model(input_ids=ids).logits[:, -1].argmax(-1).tolist()
            replies.update({p: token_cell.get(t, -1) for p, t in zip(chunk, tokens)})
    finally:
        model.train()
    return replies


def greedy_player(learner: Learner, positions: list, prompts: dict, move_ids: list[int]):
    """`act(OpenSpiel state) -> cell` of the learner's greedy policy as it stands now."""
    replies = greedy_moves(learner, positions, prompts, move_ids)
    return lambda state: replies[board_of(state.history())]


def run(
    steps: int,
    eval_every: int,
    lr: float,
    seed: int,
    threads: int,
    preset: str,
    labels: str,
    tmp: Path,
    eager: bool = False,
) -> dict:
    # supervised labels: no advantage is read, and the demo's GAE discount goes with its value head
    settings = [f"seed={seed}", f"learner.lr={lr}", "learner.advantage=rae", "learner.gamma=1"]
    settings.append("buffer.whole_games=false")
    if preset:
        settings.append(f"model.preset={preset}")
    if threads:
        settings.append(f"learner.threads={threads}")
    if eager:
        settings.append("learner.compile=false")
    cfg = load_config(CONFIG, settings)
    model_dir = str(create_default_model(tmp / "model", cfg.model.preset, cfg.model.max_model_len, seed=seed))
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    answers = optimal_moves()
    positions = list(answers)
    prompts = {}
    for board, player in positions:
        game = TicTacToe()
        game.board, game.current_player = board, player
        prompts[board, player] = tokenizer(game.observation(player)).input_ids
    move_ids = [tokenizer.convert_tokens_to_ids(TicTacToe.action_text(cell)) for cell in range(9)]
    rng = random.Random(seed)
    curve, train_s = [], 0.0
    for step in range(1, steps + 1):
        table = schema.from_rows(
            label_rows(
                rng.choices(positions, k=cfg.learner.batch_size),
                answers,
                prompts,
                move_ids,
                rng,
                labels == "one",
            )
        )
        start = time.perf_counter()
        metrics = learner.train_step(table)
        train_s += time.perf_counter() - start
        if step % eval_every == 0 or step == steps:
            score = tictactoe_vs_minimax(
                greedy_player(learner, positions, prompts, move_ids), games=200, seed=seed
            )
            curve.append(
                {"step": step, "train_s": round(train_s, 1), "nll": round(metrics["loss"], 4), **score}
            )
            print(f"step {step}: {curve[-1]}", flush=True)
    return {
        "curve": curve,
        "step_s": train_s / steps,  # a compiled learner's first step, which compiles, included
        "preset": cfg.model.preset,
        "batch": cfg.learner.batch_size,
        "compiled": cfg.learner.compile,
    }


def reached(curve: list[dict], goal: str = GOAL) -> tuple[dict | None, dict | None]:
    """The first evaluation whose non-loss meets `goal`, and the first from which every later
    one does (None where there is none)."""
    first = next((p for p in curve if meets(p["non_loss"], goal)), None)
    held = None
    for p in reversed(curve):
        if not meets(p["non_loss"], goal):
            break
        held = p
    return first, held


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-3, help="at 3e-3 the 1m preset stalled (one trial)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="0: the config's learner.threads")
    p.add_argument("--preset", default="", help="a model preset other than the demo's")
    p.add_argument(
        "--labels",
        choices=("one", "any"),
        default="one",
        help="one: each position's lowest optimal cell, always; any: one of its optimal cells at random",
    )
    p.add_argument(
        "--eager",
        action="store_true",
        help="the learner uncompiled (the demo's compiles its forward: ~40-50 s once, then faster steps)",
    )
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args(argv)
    facts = machine()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(
            args.steps,
            args.eval_every,
            args.lr,
            args.seed,
            args.threads,
            args.preset,
            args.labels,
            Path(tmp),
            args.eager,
        )
    first, held = reached(result["curve"])
    best = max(p["non_loss"] for p in result["curve"])
    note = (
        f"perfect labels ({args.labels}), {result['preset']} preset, {result['batch']} positions a step, "
        f"{result['step_s']:.2f} s a step; best non-loss {best}"
    )
    figures = {
        "tictactoe_ceiling_first_step": figure(first and first["step"], None, note=note),
        "tictactoe_ceiling_held_step": figure(held and held["step"], None, note=f"{GOAL} from then on"),
    }
    write("ceiling", figures, facts, args.results or RESULTS, lr=args.lr, seed=args.seed, **result)
    return figures


if __name__ == "__main__":
    main()
