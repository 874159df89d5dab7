from actors.generator import LEARNER, summarize
from selfplay import schema
from tests.rows import make_row


def turn(traj, turn_index, role, policy, opponent, outcome, illegal=False):
    return make_row(traj_id=traj, turn=turn_index, role=role, policy_id=policy, opponent_id=opponent,
                    outcome=outcome, illegal=illegal)


def test_a_game_the_learner_never_moved_in_still_counts():
    table = schema.from_rows([
        # g1: learner is X and wins
        turn("g1", 0, 0, LEARNER, "minimax", 1.0), turn("g1", 1, 1, "minimax", LEARNER, -1.0),
        # g2: the opponent (X) opens with an illegal move; the learner (O) wins unplayed
        turn("g2", 0, 0, "other", LEARNER, -1.0, illegal=True),
        # g3: learner is O and plays an illegal move
        turn("g3", 0, 0, "minimax", LEARNER, 1.0), turn("g3", 1, 1, LEARNER, "minimax", -1.0, illegal=True),
    ])
    s = summarize(table)
    assert s["games"] == 3 and s["first_games"] == 1 and s["second_games"] == 2
    assert s["win"] == 2 / 3 and s["loss"] == 1 / 3 and s["illegal"] == 1 / 3
    assert s["second_win"] == 0.5 and s["second_illegal"] == 0.5 and s["first_win"] == 1.0
