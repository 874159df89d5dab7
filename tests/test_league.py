"""League math (Elo, PFSP, matchmaking, opponent assignment, promotion) and the league's
saved state, against hand-worked numbers."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import pytest

from selfplay.league import (
    DEFAULT_RATING,
    LEARNER,
    MODES,
    SELF,
    LeagueState,
    Member,
    PromotionResult,
    assign_opponents,
    elo_expected,
    elo_update,
    latest_weights,
    matchmaking_probs,
    near_skill_weights,
    pfsp_weights,
    promotion,
    refreshes_reference,
)

TTT = "tictactoe"


def member(mid: str, rating: float = DEFAULT_RATING, step: int = 0) -> Member:
    return Member(
        id=mid,
        version=step,
        step=step,
        path=f"/ckpt/{mid}",
        checksum=f"sha-{mid}",
        rating=rating,
        created_at=1.5,
    )


# --- Elo -----------------------------------------------------------------------------


def test_elo_expected_equal_ratings_is_half():
    assert elo_expected(1000.0, 1000.0) == 0.5


def test_elo_expected_400_point_gap_is_ten_to_one():
    # 1 / (1 + 10^(-400/400)) = 1 / (1 + 1/10) = 10/11; the weaker side gets 1/11
    assert elo_expected(1400.0, 1000.0) == pytest.approx(10 / 11)
    assert elo_expected(1000.0, 1400.0) == pytest.approx(1 / 11)


def test_elo_update_equal_ratings_k32():
    # delta = 32 * (1 - 0.5) = 16; a draw moves nothing
    assert elo_update(1000.0, 1000.0, 1.0) == (1016.0, 984.0)
    assert elo_update(1000.0, 1000.0, 0.0) == (984.0, 1016.0)
    assert elo_update(1000.0, 1000.0, 0.5) == (1000.0, 1000.0)


def test_elo_update_400_point_gap_k32():
    # favourite wins: 32 * (1 - 10/11) = 32/11; loses: 32 * (0 - 10/11) = -320/11;
    # draws: 32 * (1/2 - 10/11) = -144/11
    assert elo_update(1400.0, 1000.0, 1.0) == pytest.approx((1400 + 32 / 11, 1000 - 32 / 11))
    assert elo_update(1400.0, 1000.0, 0.0) == pytest.approx((1400 - 320 / 11, 1000 + 320 / 11))
    assert elo_update(1400.0, 1000.0, 0.5) == pytest.approx((1400 - 144 / 11, 1000 + 144 / 11))
    # k scales the step: k = 16 halves the upset's 320/11
    assert elo_update(1400.0, 1000.0, 0.0, k=16) == pytest.approx((1400 - 160 / 11, 1000 + 160 / 11))


@pytest.mark.parametrize("ra, rb", [(1000.0, 1000.0), (1400.0, 1000.0), (873.5, 1291.25)])
@pytest.mark.parametrize("score_a", [0.0, 0.5, 1.0])
def test_elo_update_moves_each_side_by_its_own_surprise(ra, rb, score_a):
    """Each rating by the textbook rule from its own side (so the pair is zero-sum)."""
    na, nb = elo_update(ra, rb, score_a, k=24.0)
    expected_a = 1 / (1 + 10 ** ((rb - ra) / 400))
    expected_b = 1 / (1 + 10 ** ((ra - rb) / 400))
    assert na == pytest.approx(ra + 24.0 * (score_a - expected_a))
    assert nb == pytest.approx(rb + 24.0 * ((1 - score_a) - expected_b))
    assert na + nb == pytest.approx(ra + rb)


# --- matchmaking weights -------------------------------------------------------------


def test_pfsp_weights_power_two():
    # (1 - x)^2: 0.5625, 0.25, 0; sum 0.8125
    assert pfsp_weights([0.25, 0.5, 1.0]) == pytest.approx([0.5625 / 0.8125, 0.25 / 0.8125, 0.0])


def test_pfsp_weights_power_one():
    # (1 - x): 0.75, 0.5, 0; sum 1.25
    assert pfsp_weights([0.25, 0.5, 1.0], power=1.0) == pytest.approx([0.6, 0.4, 0.0])


def test_pfsp_weights_all_beaten_fall_back_to_uniform_and_empty_is_empty():
    assert pfsp_weights([1.0, 1.0, 1.0, 1.0]) == [0.25, 0.25, 0.25, 0.25]
    assert pfsp_weights([]) == []


def test_near_skill_weights_gaussian_around_learner():
    # offsets 0, +1, -1, +2 scales -> exp(0), exp(-1/2), exp(-1/2), exp(-2)
    raw = [1.0, math.exp(-0.5), math.exp(-0.5), math.exp(-2.0)]
    w = near_skill_weights(1000.0, [1000.0, 1200.0, 800.0, 1400.0], scale=200.0)
    assert w == pytest.approx([r / sum(raw) for r in raw])
    assert w[1] == w[2]  # symmetric in the rating gap
    assert near_skill_weights(1000.0, []) == []


def test_near_skill_weights_far_ratings_do_not_divide_by_zero():
    assert near_skill_weights(0.0, [1e6, 2e6]) == [0.5, 0.5]


def test_latest_weights_put_all_mass_on_newest():
    assert latest_weights(3) == [0.0, 0.0, 1.0]
    assert latest_weights(1) == [1.0]
    assert latest_weights(0) == []


def test_matchmaking_probs_dispatches_on_mode():
    ratings, scores = [1000.0, 1200.0], [0.25, 0.5]
    assert MODES == ("pfsp", "near", "latest")
    assert matchmaking_probs("pfsp", 1000.0, ratings, scores) == pfsp_weights(scores)
    assert matchmaking_probs("pfsp", 1000.0, ratings, scores, power=1.0) == pytest.approx(
        [0.75 / 1.25, 0.5 / 1.25]
    )
    assert matchmaking_probs("near", 1000.0, ratings, scores, scale=100.0) == near_skill_weights(
        1000.0, ratings, scale=100.0
    )
    assert matchmaking_probs("latest", 1000.0, ratings, scores) == [0.0, 1.0]


def test_matchmaking_probs_unknown_mode_is_named():
    with pytest.raises(ValueError, match="'elo'"):
        matchmaking_probs("elo", 1000.0, [1000.0], [0.5])
    with pytest.raises(ValueError, match="2 ratings but 1 scores"):
        matchmaking_probs("pfsp", 1000.0, [1000.0, 1000.0], [0.5])


# --- assign_opponents ----------------------------------------------------------------


def test_self_count_is_exact_and_length_is_n_games():
    out = assign_opponents(
        ["a", "b"], [0.5, 0.5], n_games=10, self_fraction=0.3, max_distinct=2, rng=random.Random(0)
    )
    assert len(out) == 10
    assert out.count(SELF) == 3  # round(10 * 0.3)
    assert set(out) - {SELF} <= {"a", "b"}


def test_no_members_means_every_game_is_self():
    out = assign_opponents([], [], n_games=7, self_fraction=0.0, max_distinct=4, rng=random.Random(0))
    assert out == [SELF] * 7


def test_at_most_max_distinct_members_per_wave():
    ids = [f"m{i}" for i in range(10)]
    for seed in range(50):
        out = assign_opponents(
            ids, [0.1] * 10, n_games=200, self_fraction=0.25, max_distinct=2, rng=random.Random(seed)
        )
        assert out.count(SELF) == 50
        assert len(set(out) - {SELF}) == 2  # 150 draws from 2 members: both show up


def test_zero_probability_members_are_never_drawn():
    out = assign_opponents(
        ["a", "b", "c"], [0.0, 1.0, 0.0], n_games=100, self_fraction=0.0, max_distinct=3, rng=random.Random(1)
    )
    assert out == ["b"] * 100


def test_order_is_shuffled():
    out = assign_opponents(["a"], [1.0], n_games=100, self_fraction=0.5, max_distinct=1, rng=random.Random(0))
    assert out.count(SELF) == 50
    assert out[:50] != [SELF] * 50


def test_empirical_frequencies_match_probs_when_all_members_fit():
    # With max_distinct >= len every member is in the pool, so each game is an i.i.d. draw
    # from probs; a count's std is sqrt(n p (1 - p)): allow 4 standard deviations.
    probs, n = [0.5, 0.3, 0.2], 20000
    out = assign_opponents(
        ["a", "b", "c"], probs, n_games=n, self_fraction=0.0, max_distinct=5, rng=random.Random(2)
    )
    counts = Counter(out)
    for mid, p in zip("abc", probs):
        assert abs(counts[mid] / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_pool_is_drawn_without_replacement_by_weight():
    # probs [0.5, 0.25, 0.25], pool of 2: "a" is left out only if b then c or c then b are
    # drawn: 2 * 0.25 * (0.25 / 0.75) = 1/6, so "a" is in the pool of 5/6 of waves (and then
    # in the 50 games but with probability (1/3)^50).
    waves = 4000
    rng = random.Random(3)
    with_a = sum(
        "a"
        in assign_opponents(
            ["a", "b", "c"], [0.5, 0.25, 0.25], n_games=50, self_fraction=0.0, max_distinct=2, rng=rng
        )
        for _ in range(waves)
    )
    assert abs(with_a / waves - 5 / 6) <= 4 * math.sqrt(5 / 36 / waves)


def test_assignment_is_deterministic_for_a_seed():
    args = (["a", "b", "c"], [0.2, 0.3, 0.5], 64, 0.25, 2)
    first = assign_opponents(*args, rng=random.Random(7))
    assert assign_opponents(*args, rng=random.Random(7)) == first
    assert assign_opponents(*args, rng=random.Random(8)) != first


def test_assign_opponents_rejects_bad_inputs():
    rng = random.Random(0)
    with pytest.raises(ValueError, match="2 members but 1 probs"):
        assign_opponents(["a", "b"], [1.0], 4, 0.0, 1, rng)
    with pytest.raises(ValueError, match="probability 0"):
        assign_opponents(["a"], [0.0], 4, 0.0, 1, rng)
    with pytest.raises(ValueError, match="self_fraction"):
        assign_opponents(["a"], [1.0], 4, 1.5, 1, rng)


# --- promotion -----------------------------------------------------------------------


def test_promotion_score_and_wilson_bounds_by_hand():
    # 6 wins, 3 draws, 1 loss: score = (6 + 1.5) / 10 = 0.75. Wilson, z = 1.96, n = 10:
    # denom = 1 + 3.8416/10 = 1.38416; centre = (0.75 + 0.19208) / 1.38416 = 0.680615;
    # half = 1.96 * sqrt(0.1875/10 + 3.8416/400) / 1.38416 = 0.238439
    r = promotion(6, 3, 1)
    assert r.games == 10 and r.score == 0.75 and r.promote
    assert r.lo == pytest.approx(0.680615 - 0.238439, abs=1e-6)
    assert r.hi == pytest.approx(0.680615 + 0.238439, abs=1e-6)


def test_promotion_threshold_is_strict():
    assert promotion(6, 0, 4).score == 0.6 and not promotion(6, 0, 4).promote
    assert promotion(5, 2, 3).score == 0.6 and not promotion(5, 2, 3).promote  # (5 + 1) / 10
    assert promotion(7, 0, 3).promote
    assert not promotion(7, 0, 3, threshold=0.7).promote


def test_promotion_needs_min_games():
    assert not promotion(3, 0, 0, min_games=10).promote
    assert promotion(10, 0, 0, min_games=10).promote


def test_the_reference_follows_every_kth_promotion_or_stays_the_supervised_policy():
    assert [refreshes_reference(n, 1) for n in range(1, 5)] == [True] * 4  # the previous snapshot
    assert [refreshes_reference(n, 2) for n in range(1, 7)] == [False, True, False, True, False, True]
    assert [refreshes_reference(n, 3) for n in range(1, 7)] == [False, False, True, False, False, True]
    assert not any(refreshes_reference(n, 0) for n in range(0, 10))  # never: snapshot 0 stays
    assert not refreshes_reference(0, 1)  # snapshot 0 is the supervised policy, the reference already


def test_draws_count_half():
    r = promotion(0, 10, 0)
    assert r.score == 0.5 and not r.promote
    assert promotion(2, 8, 0).score == 0.6  # (2 + 4) / 10


def test_promotion_with_no_games():
    assert promotion(0, 0, 0, min_games=0) == PromotionResult(False, 0.0, 0.0, 1.0, 0)


# --- LeagueState ---------------------------------------------------------------------


def test_member_lookup_and_duplicates():
    s = LeagueState()
    s.add_member(member("m1"), step=3)
    assert s.member("m1").path == "/ckpt/m1"
    assert s.rating_history == [(3, "m1", DEFAULT_RATING)]
    with pytest.raises(KeyError, match="no league member 'm9'"):
        s.member("m9")
    with pytest.raises(ValueError, match="already has a member 'm1'"):
        s.add_member(member("m1"), step=4)
    with pytest.raises(ValueError, match="reserved"):
        s.add_member(member(LEARNER), step=4)


def test_record_updates_both_ratings_by_the_elo_amount():
    s = LeagueState()
    s.add_member(member("m1"), step=0)
    s.add_member(member("m2", rating=1400.0), step=0)
    s.record(LEARNER, "m1", 1.0, TTT, step=5)  # equal ratings: +-16
    assert (s.learner_rating, s.member("m1").rating) == (1016.0, 984.0)
    # 1400 loses to 984: delta = 32 * (0 - E), E = 1 / (1 + 10^(-416/400))
    s.record("m2", "m1", 0.0, TTT, step=6)
    e = 1 / (1 + 10 ** (-416 / 400))
    assert s.member("m2").rating == pytest.approx(1400 - 32 * e)
    assert s.member("m1").rating == pytest.approx(984 + 32 * e)
    assert s.rating_history[:4] == [
        (0, "m1", 1000.0),
        (0, "m2", 1400.0),
        (5, LEARNER, 1016.0),
        (5, "m1", 984.0),
    ]
    assert [h[:2] for h in s.rating_history[4:]] == [(6, "m2"), (6, "m1")]
    assert s.games_played == 2


def test_record_against_400_points_higher_member():
    s = LeagueState()
    s.add_member(member("m2", rating=1400.0), step=0)
    s.record("m2", LEARNER, 0.0, TTT, step=1)  # the underdog learner wins: 32 * 10/11
    assert s.learner_rating == pytest.approx(1000 + 320 / 11)
    assert s.member("m2").rating == pytest.approx(1400 - 320 / 11)


def test_unrated_record_keeps_ratings_but_counts_the_game():
    s = LeagueState()
    s.add_member(member("m1"), step=0)
    s.record(LEARNER, "m1", 1.0, TTT, step=1, rate=False)
    assert s.learner_rating == 1000.0 and s.member("m1").rating == 1000.0
    assert len(s.rating_history) == 1
    assert s.head_to_head(LEARNER, "m1") == (1, 0, 0) and s.games_played == 1


def test_head_to_head_is_symmetric_per_game_and_summed():
    s = LeagueState()
    s.add_member(member("m1"), step=0)
    s.record(LEARNER, "m1", 1.0, TTT, step=1)
    s.record("m1", LEARNER, 0.5, TTT, step=2)
    s.record("m1", LEARNER, 1.0, "kuhn", step=3)
    s.record(LEARNER, "m1", 0.0, "kuhn", step=4)
    assert s.head_to_head(LEARNER, "m1", TTT) == (1, 1, 0)
    assert s.head_to_head("m1", LEARNER, TTT) == (0, 1, 1)
    assert s.head_to_head(LEARNER, "m1", "kuhn") == (0, 0, 2)
    assert s.head_to_head(LEARNER, "m1") == (1, 1, 2)
    assert s.head_to_head("m1", LEARNER) == (2, 1, 1)
    assert s.head_to_head(LEARNER, "m1", "chess") == (0, 0, 0)
    assert len(s.results) == 2  # one entry per unordered pair and game


def test_record_rejects_self_play_unknown_ids_and_bad_scores():
    s = LeagueState()
    s.add_member(member("m1"), step=0)
    with pytest.raises(ValueError, match="oneself"):
        s.record("m1", "m1", 1.0, TTT, step=1)
    with pytest.raises(ValueError, match="oneself"):
        s.record(LEARNER, SELF, 1.0, TTT, step=1)
    with pytest.raises(KeyError, match="m9"):
        s.record(LEARNER, "m9", 1.0, TTT, step=1)
    with pytest.raises(ValueError, match="0, 0.5 or 1"):
        s.record(LEARNER, "m1", 0.7, TTT, step=1)
    assert s.results == {} and s.games_played == 0


def test_learner_scores_use_a_laplace_prior():
    s = LeagueState()
    s.add_member(member("m1"), step=0)
    s.add_member(member("m2"), step=0)
    s.record(LEARNER, "m1", 1.0, TTT, step=1)
    s.record("m1", LEARNER, 0.5, "kuhn", step=2)
    # m1: w=1, d=1, n=2 -> (1 + 0.5 + 1) / 4 = 0.625; m2 unplayed -> 1/2
    assert s.learner_scores() == [0.625, 0.5]


def _populated() -> LeagueState:
    s = LeagueState()
    s.add_member(member("m1", step=10), step=10)
    s.add_member(member("m2", rating=1234.5, step=20), step=20)
    s.record(LEARNER, "m1", 1.0, TTT, step=21)
    s.record("m2", LEARNER, 0.5, "kuhn", step=22)
    s.record("m1", "m2", 0.0, TTT, step=23, rate=False)
    return s


def test_to_dict_from_dict_round_trip_through_json():
    s = _populated()
    d = json.loads(json.dumps(s.to_dict()))
    assert d["league_version"] == 1
    assert LeagueState.from_dict(d) == s


def test_save_load_round_trip(tmp_path):
    s = _populated()
    path = tmp_path / "league.json"
    s.save(path)
    s.save(path)  # overwriting is fine
    assert LeagueState.load(path) == s
    assert [p.name for p in tmp_path.iterdir()] == ["league.json"]  # no tmp file left


def test_wrong_league_version_errors():
    d = _populated().to_dict()
    d["league_version"] = 2
    with pytest.raises(ValueError, match="league_version 2"):
        LeagueState.from_dict(d)
    del d["league_version"]
    with pytest.raises(ValueError, match="league_version None"):
        LeagueState.from_dict(d)


def test_pfsp_reads_the_recent_window_per_game_not_all_time():
    s = LeagueState()
    s.add_member(member("m1"), step=0)
    for _ in range(6):  # long ago the learner lost every TicTacToe game to m1...
        s.record(LEARNER, "m1", 0.0, TTT, step=1, window=4)
    for _ in range(4):  # ...now it wins them all: only these four are in the window
        s.record(LEARNER, "m1", 1.0, TTT, step=2, window=4)
    s.record("m1", LEARNER, 1.0, "kuhn", step=3, window=4)  # m1 won a Kuhn game: learner 0
    assert s.recent[("m1", TTT)] == [1.0, 1.0, 1.0, 1.0]
    # per game: TicTacToe (4 + 1) / (4 + 2) = 5/6, Kuhn (0 + 1) / (1 + 2) = 1/3; mean 7/12
    assert s.learner_scores(recent=True) == [pytest.approx(7 / 12)]
    # all time: w=4, d=0, n=11 -> (4 + 1) / 13
    assert s.learner_scores() == [pytest.approx(5 / 13)]


def test_recent_results_survive_a_save_and_old_files_still_load(tmp_path):
    s = LeagueState()
    s.add_member(member("m1"), step=0)
    s.record(LEARNER, "m1", 0.5, TTT, step=1, window=10)
    s.save(tmp_path / "league.json")
    assert LeagueState.load(tmp_path / "league.json").recent == {("m1", TTT): [0.5]}
    old = s.to_dict()
    del old["recent"]  # written before the window existed
    assert LeagueState.from_dict(old).recent == {}
