"""`selfplay league RUN_DIR`: the league as a table (members, Elo, games, the learner's
record against each) and the head-to-head score matrix, from the newest complete
checkpoint's league.json."""

from __future__ import annotations

import json
from pathlib import Path

from selfplay.league import LEARNER, LeagueState
from selfplay.stats import points


def load_league(run_dir: Path) -> LeagueState:
    done = sorted(p.parent for p in (Path(run_dir) / "checkpoints").glob("step_*/COMPLETE"))
    states = [d / "league.json" for d in done if (d / "league.json").exists()]
    if not states:
        raise FileNotFoundError(
            f"{run_dir}: no complete checkpoint with a league "
            "(was the run started with league.enabled: true?)"
        )
    return LeagueState.load(states[-1])


def score_matrix(state: LeagueState) -> tuple[list[str], list[list[float | None]]]:
    """Row player's score (wins + draws/2) / games against the column player over all games;
    None where the pair never played."""
    ids = [LEARNER] + [m.id for m in state.members]
    matrix = []
    for a in ids:
        row = []
        for b in ids:
            w, d, l = state.head_to_head(a, b) if a != b else (0, 0, 0)
            row.append(points(w, d) / (w + d + l) if w + d + l else None)
        matrix.append(row)
    return ids, matrix


def member_rows(state: LeagueState) -> list[dict]:
    """One row per member: id, step, version, Elo, games against the learner and the
    learner's W/D/L against it."""
    rows = []
    for m in state.members:
        w, d, l = state.head_to_head(LEARNER, m.id)
        rows.append(
            {
                "id": m.id,
                "step": m.step,
                "version": m.version,
                "elo": round(m.rating, 1),
                "games_vs_learner": w + d + l,
                "learner_w_d_l": [w, d, l],
            }
        )
    return rows


def league_table(run_dir: Path, as_json: bool = False) -> str:
    state = load_league(run_dir)
    rows = member_rows(state)
    ids, matrix = score_matrix(state)
    if as_json:
        return json.dumps(
            {
                "learner_elo": state.learner_rating,
                "games": state.games_played,
                "members": rows,
                "head_to_head": {"ids": ids, "score": matrix},
            }
        )
    lines = [
        f"learner Elo {state.learner_rating:.1f}; {len(rows)} members; {state.games_played} games recorded",
        "",
        f"{'member':<10} {'step':>6} {'version':>7} {'Elo':>8} {'games':>7}  learner W/D/L",
    ]
    lines += [
        f"{r['id']:<10} {r['step']:>6} {r['version']:>7} {r['elo']:>8.1f} {r['games_vs_learner']:>7}  "
        + "/".join(map(str, r["learner_w_d_l"]))
        for r in rows
    ]
    lines += [
        "",
        "head-to-head: row's score vs column (wins + draws/2) / games",
        " " * 10 + "".join(f"{i:>10}" for i in ids),
    ]
    lines += [
        f"{a:<10}" + "".join(f"{'-' if v is None else f'{v:.2f}':>10}" for v in row)
        for a, row in zip(ids, matrix)
    ]
    return "\n".join(lines)
