"""Trajectory rows for tests: every schema column filled, any of them overridable."""

from __future__ import annotations

from selfplay import schema


def make_row(**fields) -> dict:
    """One learner turn of a TicTacToe game; keyword arguments replace columns by name.
    Float values are exact in float32 so rows compare equal after a round trip."""
    unknown = sorted(set(fields) - set(schema.COLUMNS))
    if unknown:
        raise KeyError(f"make_row: no such schema columns {unknown}; see selfplay/schema.py FIELDS")
    row = {
        "run_id": "test-run",
        "traj_id": "traj-0",
        "game": "tictactoe",
        "seed": 0,
        "turn": 0,
        "role": 0,
        "policy_id": "learner",
        "policy_version": 0,
        "opponent_id": "self",
        "opponent_version": 0,
        "prompt_ids": [1, 2, 3],
        "response_ids": [5],
        "behaviour_logprobs": [-0.5],
        "response_text": "5",
        "reward": 0.0,
        "ret": 1.0,
        "outcome": 1.0,
        "illegal": False,
        "trainable": True,
        "generator_id": "gen-0",
        "gen_time_s": 0.25,
        "created_at": 1700000000.5,
        "task": None,
        "group_id": None,
        "reference_id": None,
        "scores": None,
        "label": None,
        "advantage": None,
        "rejected_ids": None,
        "rejected_text": None,
        "allowed_ids": None,
    }
    assert list(row) == schema.COLUMNS, "make_row is out of date with schema.FIELDS"
    row.update(fields)
    return row


def make_task_row(group: str, reward: float, text: str = "x", **fields) -> dict:
    """One scored arithmetic reply of prompt group `group` (unique per group, text, reward
    and turn); keyword arguments replace columns by name."""
    return make_row(
        **{
            "traj_id": f"{group}-{text}-{reward}-{fields.get('turn', 0)}",
            "game": "arithmetic",
            "task": "arithmetic",
            "group_id": group,
            "reference_id": f"arithmetic:{group}",
            "reward": reward,
            "ret": reward,
            "outcome": reward,
            "response_text": text,
            **fields,
        }
    )
