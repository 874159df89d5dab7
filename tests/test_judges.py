"""Judges: the rule constitution's principles on hand-computed values, hard principles, the
config errors, and the both-orders verdict logic."""

from __future__ import annotations

import math

import pytest

from selfplay.tasks.judges import (
    Constitution,
    Principle,
    both_orders,
    brevity,
    by_score,
    judge_pair,
    mentions,
    no_profanity,
    no_repetition,
    sentiment,
)


def test_sentiment_is_vaders_compound_from_its_shipped_lexicon_mapped_to_0_1():
    # VADER: compound = x / sqrt(x^2 + 15), x the summed valence; 'lovely' is 2.8 in its lexicon
    assert sentiment("", "a lovely day.", "") == pytest.approx(
        (2.8 / math.sqrt(2.8**2 + 15) + 1) / 2, abs=1e-4
    )
    assert sentiment("", "the fox.", "") == 0.5
    assert sentiment("", "the fox is sad.", "") < 0.5


def test_mentions_counts_whole_words_of_the_reference():
    assert mentions("", "The fox in the meadow.", "fox|meadow|dusk") == pytest.approx(2 / 3)
    assert mentions("", "the foxes at dusk", "fox|meadow|dusk") == pytest.approx(
        1 / 3
    )  # 'foxes' is not 'fox'
    assert mentions("", "anything", "") == 1.0


@pytest.mark.parametrize("n, expected", [(0, 1.0), (4, 1.0), (5, 0.75), (6, 0.5), (8, 0.0), (20, 0.0)])
def test_brevity_is_one_up_to_max_words_then_falls_to_zero_at_twice(n, expected):
    assert brevity("", " ".join(["w"] * n), "", max_words=4) == pytest.approx(expected)


def test_no_repetition_and_no_profanity():
    assert no_repetition("", "very very very sad", "") == pytest.approx(2 / 4)
    assert no_repetition("", "", "") == 0.0
    assert no_profanity("", "damn, the fox is sad.", "") == 0.0  # better_profanity's shipped list
    assert no_profanity("", "the fox is sad.", "") == 1.0
    # the list's phrases match only whole: their words alone are everyday words
    for fine in ["she is happy", "the dog in the park", "the blue lake", "the bird flew off", "some three"]:
        assert no_profanity("", fine, "") == 1.0, fine
    assert no_profanity("", "a blow job", "") == 0.0
    assert no_profanity("", "the 2 girls 1 cup", "") == 0.0
    assert no_profanity("", "blow the job", "") == 1.0
    assert no_profanity("", "what the f u c k", "") == 0.0  # the list's 'f.u.c.k', split as replies are


def test_constitution_total_is_the_weighted_mean_and_keeps_every_part():
    judge = Constitution.from_config(
        [
            {"name": "mentions", "weight": 2.0},
            {"name": "no_repetition"},
            {"name": "no_profanity", "hard": True},
        ]
    )
    score = judge.score("fox, meadow:", "the fox is the fox", "fox|meadow")
    # mentions 1/2, no_repetition 3/5 (the, fox, is), no_profanity 1
    assert score.parts == pytest.approx(
        {"mentions": 0.5, "no_repetition": 0.6, "no_profanity": 1.0, "violations": 0.0}
    )
    assert score.total == pytest.approx((2 * 0.5 + 0.6 + 1.0) / 4) and score.valid


def test_a_hard_violation_sets_the_floor_whatever_the_rest_says():
    judge = Constitution.from_config(
        [{"name": "mentions", "weight": 5.0}, {"name": "no_profanity", "hard": True}], hard_floor=-1.0
    )
    score = judge.score("fox:", "damn fox", "fox")
    assert score.total == -1.0 and score.parts["mentions"] == 1.0 and score.parts["violations"] == 1.0
    assert not judge.score("fox:", "", "fox").valid


@pytest.mark.parametrize(
    "principles, match",
    [
        ([], "at least one principle"),
        ([{"name": "kindness"}], "unknown principle 'kindness'"),
        ([{"name": "brevity", "params": {"max_word": 3}}], r"brevity\.params: unknown max_word"),
        (
            [{"name": "brevity", "params": {"max_words": 0}}],
            r"brevity\.params\.max_words: must be an integer >= 1, got 0",
        ),
        ([{"name": "brevity", "params": {"max_words": -3}}], r"max_words: must be an integer >= 1, got -3"),
        ([{"name": "brevity", "params": {"max_words": 2.5}}], r"max_words: must be an integer >= 1, got 2.5"),
        ([{"name": "brevity"}, {"name": "brevity"}], "listed twice"),
        ([{"name": "brevity", "weight": -1}], r"brevity\.weight: must be >= 0"),
        ([{"name": "brevity", "weight": 0}], "nothing is judged"),
        (["brevity"], r"principles\[0\]: expected a mapping"),
        ([{"name": "brevity", "hard_floor": 1}], r"principles\[0\]: unknown key\(s\) hard_floor"),
    ],
)
def test_constitution_config_errors_name_the_field(principles, match):
    with pytest.raises(ValueError, match=match):
        Constitution.from_config(principles)


def test_a_principle_takes_its_params():
    assert Principle("brevity", params={"max_words": 2})("", "a b c", "") == pytest.approx(0.5)


def test_by_score_needs_more_than_the_margin():
    assert by_score(0.7, 0.5) == "first" and by_score(0.5, 0.7) == "second"
    assert by_score(0.5, 0.5) == "tie" and by_score(0.55, 0.5, margin=0.1) == "tie"


@pytest.mark.parametrize(
    "forward, backward, verdict",
    [
        ("first", "second", "first"),  # a named first both times: a wins
        ("second", "first", "second"),
        ("first", "first", "tie"),  # the judge always prefers the first it reads: position bias
        ("second", "second", "tie"),
        ("tie", "second", "tie"),
        ("first", "tie", "tie"),
        ("tie", "tie", "tie"),
    ],
)
def test_both_orders_keeps_only_a_verdict_that_survives_the_swap(forward, backward, verdict):
    assert both_orders(forward, backward) == verdict


def test_judge_pair_asks_both_orders_and_never_judges_identical_replies():
    asked = []

    def first_is_best(prompt, x, y):  # a judge with total position bias
        asked.append((x, y))
        return "first"

    assert judge_pair(first_is_best, "p", "a", "b") == "tie"
    assert asked == [("a", "b"), ("b", "a")]
    asked.clear()
    assert judge_pair(first_is_best, "p", "same", " same ") == "tie" and asked == []

    def longer(prompt, x, y):
        return by_score(len(x), len(y))

    assert judge_pair(longer, "p", "abc", "a") == "first"
    assert judge_pair(longer, "p", "a", "abc") == "second"


def test_scored_pair_is_a_pointwise_judges_both_orders_verdict():
    from selfplay.tasks.judges import scored_pair

    assert scored_pair("a", 0.9, "b", 0.5) == "first" and scored_pair("a", 0.5, "b", 0.9) == "second"
    assert scored_pair("a", 0.5, "b", 0.5) == "tie"
    assert scored_pair("same", 0.9, "same ", 0.1) == "tie"  # identical replies are never labelled
