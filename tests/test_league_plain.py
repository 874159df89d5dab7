"""The league's plain class (no Ray): matchmaking with skill tiers, Elo from results."""

from __future__ import annotations

import pytest

from actors.league import League
from selfplay.config import LeagueConfig
from selfplay.league import SELF, LeagueState, Member, elo_update, scripted_tier, skill_tier


def league(ratings: list[float], learner: float = 1000.0, **cfg) -> League:
    state = LeagueState(learner_rating=learner)
    for i, r in enumerate(ratings):
        state.add_member(Member(f"snap-{i}", i, i, f"/m/{i}", "c", rating=r), step=i)
    return League(LeagueConfig(enabled=True, **cfg), seed=0, state=state)


@pytest.mark.parametrize(
    "diff, tier",
    [(0, "intermediate"), (100, "intermediate"), (100.5, "expert"), (-100, "intermediate"), (-101, "novice")],
)
def test_skill_tier_bands(diff, tier):
    assert skill_tier(diff) == tier


def test_scripted_tiers():
    assert (scripted_tier("random"), scripted_tier("minimax"), scripted_tier("greedy")) == (
        "novice",
        "expert",
        "intermediate",
    )


def test_without_members_every_game_is_self_play_at_equal_skill():
    assert league([]).matchmake(5) == [(SELF, "intermediate", "intermediate")] * 5


def test_matchmaking_gives_each_side_the_others_tier():
    lg = league([1300.0, 1000.0], mode="latest", self_play_fraction=0.0)
    assert lg.matchmake(3) == [("snap-1", "intermediate", "intermediate")] * 3
    lg = league([1300.0, 800.0], mode="pfsp", self_play_fraction=0.0, max_live_opponents=2)
    games = lg.matchmake(400)
    assert set(games) == {("snap-0", "expert", "novice"), ("snap-1", "novice", "expert")}


def test_self_play_fraction_is_kept_per_wave():
    games = league([1000.0], self_play_fraction=0.25).matchmake(8)
    assert sum(g[0] == SELF for g in games) == 2


def test_results_move_learner_and_member_elo_by_the_elo_rule():
    lg = league([1000.0, 1200.0], elo_k=16)
    lg.step = 7
    lg.record([("kuhn", "snap-1", 1.0), ("tictactoe", "snap-0", 0.5)])
    r_learner, r1 = elo_update(1000.0, 1200.0, 1.0, 16)
    r_learner, r0 = elo_update(r_learner, 1000.0, 0.5, 16)
    assert lg.state.learner_rating == pytest.approx(r_learner)
    assert lg.state.member("snap-1").rating == pytest.approx(r1)
    assert lg.state.member("snap-0").rating == pytest.approx(r0)
    assert lg.state.head_to_head("learner", "snap-1", "kuhn") == (1, 0, 0)
    assert lg.state.rating_history[-1][0] == 7
    assert lg.latest() == "snap-1"


def test_matchmakings_random_state_round_trips_through_json():
    import json
    import random

    from actors.league import rng_state

    rng = random.Random(7)
    rng.random()
    saved = json.loads(json.dumps(rng.getstate()))  # as LeagueActor.save writes it
    again = random.Random(0)
    again.setstate(rng_state(saved))
    assert [again.random() for _ in range(5)] == [rng.random() for _ in range(5)]
