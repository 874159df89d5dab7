"""The generator's game loop on a scripted engine (tests/engines.py), no vLLM and no Ray:
batching, scripted opponents, weight versions, illegal replies, context limits, evaluation
and league slots. The same loop on real engines: test_integration.py, test_league_run.py."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict

import pytest
import torch

from actors.generator import FIXED, Generator, Match, WeightMismatch, both_seats
from actors.verifier import Verifier
from selfplay import collective, schema
from selfplay.config import GeneratorConfig
from selfplay.evals import outcomes
from selfplay.games.tictactoe import TicTacToe
from selfplay.league import BLUNDER, LEARNER, OPENING, SELF
from tests.engines import EngineMaker, RuleEngine, checksum, decode, encode, legal_reply, weights


def make_generator(games=("tictactoe",), engine=None, maker=None, seed=0, max_live=2, **cfg) -> Generator:
    return Generator(
        "gen-0",
        "run-0",
        {g: 1.0 for g in games},
        engine or RuleEngine(),
        maker or EngineMaker(),
        GeneratorConfig(**cfg),
        seed,
        max_live_opponents=max_live,
    )


def by_traj(table) -> dict[str, list[dict]]:
    games = defaultdict(list)
    for row in table.to_pylist():
        games[row["traj_id"]].append(row)
    return games


def replays(table) -> bool:
    """Every trajectory of `table` replays by the game's rules to the outcomes it records."""
    verifier = Verifier(decode, encode=encode)  # prompts checked against the games' observations
    return verifier.verify(table).num_rows == table.num_rows and not verifier.rejected


def fetcher(members: dict[str, tuple[float, int]], calls: list[str] | None = None):
    """`fetch` for load_members: member -> (its weights, version, the weights' checksum)."""

    def fetch(member: str):
        if calls is not None:
            calls.append(member)
        logprob, version = members[member]
        return weights(logprob), version, checksum(weights(logprob))

    return fetch


# ---- the game loop


def test_every_game_of_a_wave_finishes_and_its_rows_replay_by_the_rules():
    gen = make_generator(games=("tictactoe", "kuhn", "negotiation"))
    table = gen.self_play(24)
    games = by_traj(table)
    assert len(games) == 24 and gen.counts["games"] == 24
    assert {rows[0]["game"] for rows in games.values()} == {"tictactoe", "kuhn", "negotiation"}
    assert all([r["turn"] for r in rows] == list(range(len(rows))) for rows in games.values())
    assert replays(table)


def test_all_pending_turns_of_one_policy_go_into_one_engine_call_per_round():
    maker = EngineMaker()
    learner = RuleEngine()
    gen = make_generator(engine=learner, maker=maker)
    gen.add_opponent("rival", "/models/rival")
    n = 5
    gen.play([Match("tictactoe", (LEARNER, LEARNER))] * n + [Match("tictactoe", (LEARNER, "rival"))] * n, 1.0)
    # One game by the same rule, move by move: every game of this wave is that game.
    game, moves = TicTacToe(), 0
    while not game.is_terminal:
        game.apply_text(legal_reply(game.observation(game.current_player)))
        moves += 1
    # Round r: every self-play game awaits the learner; a game against the rival awaits
    # the learner on even rounds and the rival on odd ones.
    assert [len(c["prompts"]) for c in learner.calls] == [n + (n if r % 2 == 0 else 0) for r in range(moves)]
    [(path, rival)] = maker.made
    assert path == "/models/rival"
    assert [len(c["prompts"]) for c in rival.calls] == [n] * (moves // 2)


def test_scripted_opponents_move_between_engine_calls_and_their_turns_are_not_trainable():
    engine = RuleEngine()
    gen = make_generator(engine=engine)
    table = gen.play(both_seats("tictactoe", "random", 6), 1.0)
    # Each round the scripted players move, then the engine call; a game moves once a
    # round. So the k-th call shows every board after k moves: the scripted reply to the
    # learner's last move is on it (learner-first games in even calls, the others in odd).
    for k, call in enumerate(engine.calls):
        for prompt in call["prompts"]:
            _, mark, cells = prompt.rstrip(":").split()
            assert (sum(c in "XO" for c in cells), mark) == (k, "XO"[k % 2]), (k, prompt)
    rows = table.to_pylist()
    scripted = [r for r in rows if r["policy_id"] == "random"]
    assert scripted and all(
        not r["trainable"]
        and r["prompt_ids"] == []
        and r["response_ids"] == []
        and r["behaviour_logprobs"] == []
        for r in scripted
    )
    assert all(r["trainable"] for r in rows if r["policy_id"] == LEARNER)
    assert replays(table)


def test_an_illegal_reply_is_flagged_and_ends_the_game_with_the_mover_losing():
    gen = make_generator(engine=RuleEngine(rule=lambda observation: "5"))
    table = gen.self_play(4)
    # X takes cell 5; O asks for cell 5 again, which is taken.
    for rows in by_traj(table).values():
        assert [(r["role"], r["response_text"], r["illegal"], r["outcome"]) for r in rows] == [
            (0, "5", False, 1.0),
            (1, "5", True, -1.0),
        ]
    assert gen.counts["illegal"] == 4
    assert replays(table)


def test_legal_moves_only_draws_each_move_from_the_legal_cells_tokens_and_keeps_them_on_the_row():
    engine = RuleEngine(rule=lambda observation: "5")  # asks for cell 5 every time
    gen = make_generator(engine=engine, legal_moves_only=True, max_response_tokens=1)
    table = gen.self_play(4)
    assert gen.counts["illegal"] == 0
    for call in engine.calls:
        for prompt, allowed in zip(call["prompts"], call["allowed"]):
            free = [c for c in prompt.split()[-1].rstrip(":") if c.isdigit()]
            assert allowed == [ord(c) for c in free]  # the legal cells' tokens, in order
    for rows in by_traj(table).values():
        for r in rows:
            assert not r["illegal"]
            assert r["response_ids"][0] in r["allowed_ids"]
        # X takes 5; every later ask for 5 is masked to the first free cell
        assert [r["response_text"] for r in rows[:3]] == ["5", "1", "2"]
    assert replays(table)


def test_without_legal_moves_only_nothing_is_masked():
    engine = RuleEngine(rule=legal_reply)
    table = make_generator(engine=engine).self_play(2)
    assert all(call["allowed"] is None for call in engine.calls)
    assert table["allowed_ids"].null_count == table.num_rows


def test_legal_moves_only_refuses_a_game_whose_moves_are_several_tokens():
    gen = make_generator(games=("negotiation",), engine=RuleEngine(rule=legal_reply), legal_moves_only=True)
    with pytest.raises(ValueError, match="legal_moves_only: negotiation's move .* tokens"):
        gen.self_play(1)


def test_a_game_whose_prompt_outgrows_the_context_is_dropped_and_counted_and_the_rest_play_on():
    tictactoe_tokens = 1 + len("tictactoe X 123456789:")  # BOS and one per character
    engine = RuleEngine(max_model_len=tictactoe_tokens)  # no room for its 1-token reply; Kuhn fits
    gen = make_generator(games=("tictactoe", "kuhn"), engine=engine)
    matches = [Match(g, (LEARNER, LEARNER)) for g in ("tictactoe", "kuhn", "tictactoe")]
    table = gen.play(matches, 1.0)
    assert set(table.column("game").to_pylist()) == {"kuhn"} and replays(table)
    assert (gen.counts["games"], gen.counts["too_long"]) == (1, 2)
    assert all(p.startswith("kuhn") for call in engine.calls for p in call["prompts"])


def test_a_prompt_and_reply_that_exactly_fill_the_context_are_played():
    engine = RuleEngine(max_model_len=1 + len("tictactoe X 123456789:") + 1)
    assert make_generator(engine=engine).self_play(1).num_rows > 0


def test_a_seed_gives_the_same_games_and_scripted_moves():
    def played(seed: int) -> list[tuple]:
        gen = make_generator(games=("tictactoe", "kuhn", "negotiation"), seed=seed)
        table = gen.play(
            [
                Match(g, seats)
                for g in ("tictactoe", "kuhn", "negotiation")
                for seats in ((LEARNER, "random"), ("random", LEARNER))
            ]
            * 3,
            1.0,
        )
        return [(r["game"], r["seed"], r["turn"], r["response_text"]) for r in table.to_pylist()]

    assert played(3) == played(3)
    assert played(3) != played(4)


# ---- weights


def test_each_model_turn_is_tagged_with_the_weight_version_that_generated_it():
    gen = make_generator()
    gen.set_weights(weights(-1.0), 1)
    first = gen.self_play(3).to_pylist()
    gen.set_weights(weights(-2.0), 2)
    second = gen.self_play(3).to_pylist()
    assert {(r["policy_version"], r["opponent_version"], *r["behaviour_logprobs"]) for r in first} == {
        (1, 1, -1.0)
    }
    assert {(r["policy_version"], r["opponent_version"], *r["behaviour_logprobs"]) for r in second} == {
        (2, 2, -2.0)
    }


def collective_sync(rendezvous, tensors) -> dict:
    entries = collective.manifest(tensors)
    return {
        "address": rendezvous.address,
        "prefix": "v2/",
        "rank": 1,
        "world": 2,
        "entries": entries,
        "plan": collective.buckets(entries, 64),
        "timeout_s": 2.0,
    }


def test_a_collective_broadcast_is_taken_during_an_engine_call_and_loaded_after_it():
    """The learner's broadcast completes while the engine plays (the generator stages the
    tensors on another thread); the load waits for the engine call to return."""
    engine = RuleEngine()
    gen = make_generator(engine=engine)
    gen.set_weights(weights(-1.0), 1)
    tensors = {"logprob": torch.tensor([-2.0])}
    rendezvous = collective.Rendezvous("127.0.0.1", timeout_s=10)
    receiver = threading.Thread(target=gen.receive_collective, args=(collective_sync(rendezvous, tensors), 2))
    seen = []

    def race(call: int) -> None:
        if call == 0:
            receiver.start()
            rendezvous.send("v2/", 2, tensors, collective.buckets(collective.manifest(tensors), 64))
            receiver.join(timeout=0.2)
            seen.append(receiver.is_alive())  # sent, yet not loaded: the engine is mid-call

    engine.on_generate = race
    rows = gen.self_play(4).to_pylist()
    receiver.join()
    assert seen == [True] and engine.loads_during_generate == 0
    assert {(r["policy_version"], *r["behaviour_logprobs"]) for r in rows if r["turn"] == 0} == {(1, -1.0)}
    assert (gen.versions[LEARNER], gen.checksum) == (2, checksum(weights(-2.0)))


def test_a_collective_broadcast_that_fails_leaves_the_engine_and_its_version_alone():
    engine = RuleEngine()
    gen = make_generator(engine=engine)
    gen.set_weights(weights(-1.0), 1)
    rendezvous = collective.Rendezvous("127.0.0.1", timeout_s=10)  # the learner never sends
    with pytest.raises(RuntimeError):
        gen.receive_collective(collective_sync(rendezvous, {"logprob": torch.tensor([-2.0])}), 2)
    assert engine.loads == [weights(-1.0)] and (gen.versions[LEARNER], gen.checksum) == (
        1,
        checksum(weights(-1.0)),
    )


def test_a_weight_change_requested_during_an_engine_call_lands_only_after_it_returns():
    engine = RuleEngine()
    gen = make_generator(engine=engine)
    gen.set_weights(weights(-1.0), 1)
    setter = threading.Thread(target=gen.set_weights, args=(weights(-2.0), 2))
    waited = []

    def race(call: int) -> None:
        if call == 0:
            setter.start()
            setter.join(timeout=0.2)
            waited.append(setter.is_alive())

    engine.on_generate = race
    rows = gen.self_play(4).to_pylist()
    setter.join()
    assert waited == [True]  # set_weights waited for the engine call
    assert engine.loads_during_generate == 0
    assert {(r["policy_version"], *r["behaviour_logprobs"]) for r in rows if r["turn"] == 0} == {(1, -1.0)}
    # every turn carries the version of the weights its log-probs came from: weights(-v)
    assert all(r["behaviour_logprobs"] == [-float(r["policy_version"])] for r in rows)
    assert gen.version == 2


# ---- evaluation


def test_evaluate_plays_n_games_in_each_seat_greedily():
    engine = RuleEngine()
    gen = make_generator(games=("kuhn",), engine=engine)
    result = gen.evaluate("kuhn", "nash", 5)
    assert (result["games"], result["first_games"], result["second_games"]) == (10, 5, 5)
    assert (result["opponent"], result["version"]) == ("nash", 0)
    assert {c["temperature"] for c in engine.calls} == {0.0}


def test_evaluation_prompts_the_learner_at_the_scripted_opponents_tier():
    engine = RuleEngine()
    gen = make_generator(engine=engine, skill_prompts=True)
    gen.evaluate("tictactoe", "minimax", 2)
    assert all(p.startswith("<expert>tictactoe ") for c in engine.calls for p in c["prompts"])


def test_an_evaluation_of_fixed_weights_is_not_moved_by_broadcasts():
    """The FIXED engine holds the weights it was given: a broadcast to the learner's engine
    mid-evaluation changes the learner's replies, not the evaluated policy's."""
    maker = EngineMaker()
    gen = make_generator(maker=maker)
    gen.load_fixed(weights(-0.25), version=7, checksum=checksum(weights(-0.25)))
    ((path, fixed),) = maker.made
    assert path is None and fixed.logprob == -0.25

    landing: list[threading.Thread] = []

    def broadcast(call_index):  # a new version is sent to the learner's engine mid-evaluation
        if call_index == 0:
            landing.append(threading.Thread(target=gen.set_weights, args=(weights(-3.0), 8)))
            landing[0].start()

    fixed.on_generate = broadcast
    table = gen.play(both_seats("tictactoe", "random", 3, policy=FIXED), 0.0, gen.eval_counts)
    landing[0].join(timeout=10)
    result = gen.evaluate("tictactoe", "random", 3, policy=FIXED)
    fixed_rows = [r for r in table.to_pylist() if r["policy_id"] == FIXED]
    assert {r["policy_version"] for r in fixed_rows} == {7}
    assert {lp for r in fixed_rows for lp in r["behaviour_logprobs"]} == {-0.25}
    assert result["version"] == 7 and result["games"] == 6 and gen.version == 8


def test_fixed_weights_that_do_not_load_as_sent_are_refused():
    gen = make_generator()
    held = checksum(weights(-0.5))
    gen.load_fixed(weights(-0.5), version=1, checksum=held)
    assert gen.fixed_checksum == held
    with pytest.raises(WeightMismatch, match="evaluation engine loaded weights"):
        gen.load_fixed(weights(-0.25), version=2, checksum=checksum(weights(-0.75)))
    assert gen.fixed_checksum is None  # it no longer holds version 1's weights either
    gen.load_fixed(weights(-0.5), version=1, checksum=held)
    with pytest.raises(ValueError):  # a load that raised part way: the same
        gen.load_fixed(b"torn", version=2, checksum=checksum(weights(-0.75)))
    assert gen.fixed_checksum is None
    fetched = []
    wanted = {"version": 1, "checksum": held}
    assert gen.policy_for(wanted, fetch=lambda: fetched.append(1) or weights(-0.5)) == FIXED
    assert fetched == [1]  # loaded again rather than measured on whatever the engine holds


def test_settled_weights_the_learners_engine_holds_are_measured_there_and_others_fixed():
    maker = EngineMaker()
    gen = make_generator(maker=maker)
    gen.set_weights(weights(-0.5), 3)
    held = {"version": 3, "checksum": checksum(weights(-0.5)), "settled": True}
    assert gen.policy_for(held, fetch=lambda: pytest.fail("nothing to fetch")) == LEARNER
    assert maker.made == []  # no second engine
    assert gen.policy_for({**held, "settled": False}, fetch=lambda: weights(-0.5)) == FIXED
    other = {"version": 2, "checksum": checksum(weights(-0.25)), "settled": True}
    assert gen.policy_for(other, fetch=lambda: weights(-0.25)) == FIXED and gen.versions[FIXED] == 2


def test_weights_landing_during_a_settled_measurement_are_caught():
    gen = make_generator()
    gen.set_weights(weights(-0.5), 3)
    settled = {"version": 3, "checksum": checksum(weights(-0.5)), "settled": True}
    policy = gen.policy_for(settled, fetch=lambda: pytest.fail("nothing to fetch"))
    gen.evaluate("tictactoe", "random", 2, policy=policy)
    gen.check_settled(settled, policy)  # nothing landed
    gen.set_weights(weights(-3.0), 4)
    with pytest.raises(WeightMismatch, match="weights of version 4 landed while version 3"):
        gen.check_settled(settled, policy)


def test_evaluations_are_counted_apart_from_training_play():
    gen = make_generator()
    gen.self_play(4)
    trained = dict(gen.counts)
    gen.evaluate("tictactoe", "random", 3)
    assert gen.counts == trained  # training throughput is not inflated by evaluations
    assert gen.eval_counts["games"] == 6 and gen.eval_counts["turns"] > 0
    assert trained["games"] == 4


# ---- league members in opponent slots


def test_load_members_refuses_a_member_whose_engine_echoes_other_weights():
    maker = EngineMaker()
    gen = make_generator(maker=maker)

    def forged(member):
        return weights(-1.0), 3, checksum(weights(-9.0))  # the league recorded other weights

    with pytest.raises(WeightMismatch, match="opponent forged loaded weights"):
        gen.load_members({"forged"}, forged)
    [(_, refused)] = maker.made
    assert "forged" not in gen.slots and "forged" not in gen.versions
    # set aside, not closed: closing one in-process vLLM engine tears down the parallel
    # state every other engine of the process uses
    assert not refused.closed and gen.spares == [refused]
    gen.load_members({"honest"}, fetcher({"honest": (-1.0, 3)}))
    assert list(gen.slots) == ["honest"] and gen.versions["honest"] == 3
    assert gen.slots["honest"] is refused and len(maker.made) == 1 and gen.spares == []  # reused


def test_a_member_load_that_fails_keeps_its_engine_aside_and_the_members_engine_is_not_reused():
    maker = EngineMaker()
    gen = make_generator(maker=maker, max_live=1)
    gen.load_members({"snap-0"}, fetcher({"snap-0": (-1.0, 1)}))
    [(_, engine)] = maker.made
    with pytest.raises(ValueError):  # a torn transfer: the engine raised mid-load
        gen.load_members({"snap-1"}, lambda member: (b"torn", 2, "0" * 64))
    # snap-0's engine held the load: snap-0 is no longer seated, its engine set aside (a
    # dropped engine would be closed by vLLM's finalizer, whenever it ran)
    assert gen.slots == {} and gen.spares == [engine] and not engine.closed
    gen.load_members({"snap-1"}, fetcher({"snap-1": (-2.0, 2)}))
    assert gen.slots == {"snap-1": engine} and len(maker.made) == 1
    gen.close()
    assert engine.closed


def test_a_new_member_takes_the_engine_of_the_least_recently_played_member():
    maker = EngineMaker()
    gen = make_generator(maker=maker, max_live=2)
    members = {"a": (-1.0, 1), "b": (-2.0, 2), "c": (-3.0, 3)}
    gen.load_members({"a", "b"}, fetcher(members))
    engines = {m: gen.slots[m] for m in ("a", "b")}
    gen.play([Match("tictactoe", (LEARNER, "a"))], 1.0)  # b is now the least recently used
    fetched = []
    gen.load_members({"c"}, fetcher(members, fetched))
    assert fetched == ["c"] and len(maker.made) == 2  # weights swapped in place, no new engine
    assert gen.slots["c"] is engines["b"] and gen.slots["a"] is engines["a"]
    assert engines["b"].logprob == -3.0 and "b" not in gen.versions


def test_a_member_the_play_needs_is_never_evicted_even_when_least_recently_used():
    gen = make_generator(max_live=2)
    members = {"a": (-1.0, 1), "b": (-2.0, 2), "c": (-3.0, 3)}
    gen.load_members({"a", "b"}, fetcher(members))
    engine_b = gen.slots["b"]
    gen.play([Match("tictactoe", (LEARNER, "a"))], 1.0)  # b is now the least recently used
    fetched = []
    gen.load_members({"b", "c"}, fetcher(members, fetched))
    assert fetched == ["c"] and set(gen.slots) == {"b", "c"} and gen.slots["b"] is engine_b
    with pytest.raises(ValueError, match="needs 3 league opponents but a generator holds 2"):
        gen.load_members({"a", "b", "c"}, fetcher(members))


def test_league_play_seats_the_learner_at_random_and_tags_opponent_ids_and_versions():
    gen = make_generator(games=("tictactoe", "kuhn"), skill_prompts=True)
    gen.set_weights(weights(-2.0), 2)
    gen.load_members({"snap-0"}, fetcher({"snap-0": (-3.0, 7)}))
    member = gen.slots["snap-0"]
    table = gen.league_play(
        [("snap-0", "expert", "novice")] * 40 + [(SELF, "intermediate", "intermediate")] * 8
    )
    seats, self_play = [], 0
    for rows in by_traj(table).values():
        learner_rows = [r for r in rows if r["policy_id"] == LEARNER]
        member_rows = [r for r in rows if r["policy_id"] == "snap-0"]
        if not member_rows and all(r["opponent_id"] == SELF for r in rows):
            self_play += 1
            assert all(r["opponent_version"] == 2 for r in rows)
            continue
        seats.append(learner_rows[0]["role"] if learner_rows else 1 - member_rows[0]["role"])
        assert all(
            (
                r["opponent_id"],
                r["opponent_version"],
                r["policy_version"],
                r["trainable"],
                *r["behaviour_logprobs"],
            )
            == ("snap-0", 7, 2, True, -2.0)
            for r in learner_rows
        )
        assert all(
            (
                r["opponent_id"],
                r["opponent_version"],
                r["policy_version"],
                r["trainable"],
                *r["behaviour_logprobs"],
            )
            == (LEARNER, 2, 7, False, -3.0)
            for r in member_rows
        )
    assert self_play == 8 and len(seats) == 40
    assert 10 <= seats.count(0) <= 30  # each seat about half the time
    assert all(p.startswith("<novice>") for c in member.calls for p in c["prompts"])
    assert replays(table)


def test_close_releases_the_learners_opponents_and_slots_engines():
    maker = EngineMaker()
    learner = RuleEngine()
    gen = make_generator(engine=learner, maker=maker)
    gen.add_opponent("rival", "/models/rival")
    gen.load_members({"snap-0"}, fetcher({"snap-0": (-1.0, 1)}))
    gen.close()
    assert learner.closed and len(maker.made) == 2 and all(e.closed for _, e in maker.made)


# ---- what the verifier hands on for training


def test_only_the_learners_turns_of_a_league_game_go_on_for_training():
    gen = make_generator()
    gen.add_opponent("snap-0", "snapshot-dir")
    table = gen.play(
        [Match("tictactoe", (LEARNER, "snap-0"))] * 3 + [Match("tictactoe", ("snap-0", LEARNER))] * 3,
        temperature=1.0,
    )
    verifier = Verifier(decode)
    training = verifier.training_turns(table)
    learner_turns = [r for r in table.to_pylist() if r["policy_id"] == LEARNER]
    assert set(training["policy_id"].to_pylist()) == {LEARNER}
    assert training.num_rows == len(learner_turns) < table.num_rows
    stats = verifier.stats()
    assert stats["accepted"] == 6 and stats["accepted_turns"] == table.num_rows
    assert stats["forwarded_turns"] == len(learner_turns)


def test_scripted_training_opponents_take_their_share_of_a_wave_in_both_seats():
    gen = make_generator(opponents={"heuristic": 0.25, "random": 0.25})
    table = gen.self_play(400)
    per_opponent, seats = defaultdict(int), defaultdict(set)
    for rows in by_traj(table).values():
        learner_rows = [r for r in rows if r["policy_id"] == LEARNER]
        opponent = learner_rows[0]["opponent_id"]
        per_opponent[opponent] += 1
        seats[opponent] |= {r["role"] for r in learner_rows}
        assert all(r["trainable"] for r in learner_rows)
        assert all(not r["trainable"] and r["policy_id"] == opponent for r in rows if r not in learner_rows)
    assert sum(per_opponent.values()) == 400
    assert 60 <= per_opponent["heuristic"] <= 140 and 60 <= per_opponent["random"] <= 140
    assert 140 <= per_opponent[SELF] <= 260
    assert seats["heuristic"] == seats["random"] == {0, 1}
    assert replays(table)


def test_random_openings_start_a_share_of_training_games_untrained_but_never_an_evaluation():
    gen = make_generator(opening_moves=1, opening_share=0.5)
    games = by_traj(gen.self_play(400))
    opened = [rows for rows in games.values() if rows[0]["policy_id"] == OPENING]
    assert 150 <= len(opened) <= 250  # half of 400
    for rows in games.values():
        openings = [r for r in rows if r["policy_id"] == OPENING]
        assert openings in ([], rows[:1])  # one move, the first, or none
        assert all(not r["trainable"] and r["response_ids"] == [] for r in openings)
        assert all(r["trainable"] for r in rows if r["policy_id"] == LEARNER)
    # the openings are random: every cell opens some game (the rule engine always opens at 1)
    cells = {rows[0]["response_text"] for rows in opened}
    assert cells == {str(c) for c in range(1, 10)}
    assert {rows[0]["response_text"] for rows in games.values() if rows not in opened} == {"1"}
    # the learner's first turn after an opening is O's reply, trained, on the opened board
    replies = [rows[1] for rows in opened]
    assert all(r["role"] == 1 and r["trainable"] and r["policy_id"] == LEARNER for r in replies)
    assert replays(gen.self_play(64))
    # evaluations start from the game's start: the same games as a generator without openings
    opening, plain = make_generator(opening_moves=3, seed=5), make_generator(seed=5)
    assert opening.evaluate("tictactoe", "random", 20) == plain.evaluate("tictactoe", "random", 20)
    assert opening.self_play(20).to_pylist()[0]["policy_id"] == OPENING


def test_random_openings_of_a_drawn_length_open_every_game_with_min_to_max_moves():
    gen = make_generator(opening_moves=3, opening_moves_min=1, opening_share=1.0)
    lengths = Counter()
    for rows in by_traj(gen.self_play(300)).values():
        k = sum(r["policy_id"] == OPENING for r in rows)
        assert [r["policy_id"] for r in rows[:k]] == [OPENING] * k  # the first k moves, then play
        assert rows[k]["policy_id"] != OPENING and rows[k]["role"] == k % 2  # whoever is next
        lengths[k] += 1
    assert set(lengths) == {1, 2, 3} and min(lengths.values()) >= 70  # uniform over 1..3 (100 each)
    fixed = make_generator(opening_moves=2, opening_share=1.0)  # no min: always opening_moves
    assert {
        sum(r["policy_id"] == OPENING for r in rows) for rows in by_traj(fixed.self_play(50)).values()
    } == {2}


def test_a_blunder_is_one_random_move_after_the_opening_and_its_seat_trains_on_none_of_that_game():
    gen = make_generator(blunder_share=1.0, blunder_plies=3, opening_moves=1)
    games = by_traj(gen.self_play(300))
    turns = Counter()
    for rows in games.values():
        blunders = [r for r in rows if r["policy_id"] == BLUNDER]
        assert len(blunders) == 1 and rows[0]["policy_id"] == OPENING  # the opening, then play
        t = rows.index(blunders[0])
        turns[t] += 1
        seat = blunders[0]["role"]
        assert not blunders[0]["trainable"] and blunders[0]["response_ids"] == []
        assert all(not r["trainable"] for r in rows if r["role"] == seat)  # before and after it
        assert all(r["trainable"] for r in rows if r["role"] != seat and r["policy_id"] == LEARNER)
    assert set(turns) == {2, 3, 4} and min(turns.values()) >= 70  # 1-3 moves after the opening
    # the rule engine plays the lowest free cell: a blunder lands elsewhere, and every game replays
    assert any(r["response_text"] != min_free for r, min_free in blunder_cells(games.values()))
    assert replays(gen.self_play(64))
    # half the games at share 0.5; none in an evaluation
    half = by_traj(make_generator(blunder_share=0.5).self_play(400)).values()
    assert 150 <= sum(any(r["policy_id"] == BLUNDER for r in rows) for rows in half) <= 250
    blundering, plain = make_generator(blunder_share=1.0, seed=5), make_generator(seed=5)
    assert blundering.evaluate("tictactoe", "random", 20) == plain.evaluate("tictactoe", "random", 20)


def blunder_cells(games):
    """Each blunder row with the cell the rule engine would have played there (the lowest free)."""
    for rows in games:
        board = set()
        for r in rows:
            if r["policy_id"] == BLUNDER:
                yield r, str(min(set(range(1, 10)) - board))
            board.add(int(r["response_text"]))


def test_against_a_scripted_opponent_only_the_opponent_blunders_and_league_games_get_none():
    gen = make_generator(blunder_share=1.0, blunder_plies=2, opponents={"heuristic": 0.5})
    gen.add_opponent("snap-0", "snapshot-dir")
    table = gen.league_play(
        [("snap-0", "intermediate", "intermediate")] * 40 + [(SELF, "intermediate", "intermediate")] * 80
    )
    against = Counter()
    for rows in by_traj(table).values():
        players = {r["policy_id"] for r in rows} - {BLUNDER}
        blunders = [r for r in rows if r["policy_id"] == BLUNDER]
        if "snap-0" in players:  # a league member's game rates it: played as it is
            assert not blunders
        elif "heuristic" in players:  # the heuristic's seat blunders; the learner trains every turn
            (blunder,) = blunders
            assert blunder["role"] == next(r["role"] for r in rows if r["policy_id"] == "heuristic")
            assert all(r["trainable"] for r in rows if r["policy_id"] == LEARNER)
        else:
            assert len(blunders) == 1
        against[next(iter(players - {LEARNER}), SELF)] += 1
    assert set(against) == {"snap-0", "heuristic", SELF}
    assert {g["opponent"] for g in outcomes(table)} == {"snap-0", "heuristic", SELF}  # no one's play
    assert replays(table)


def test_board_symmetries_show_training_games_in_views_the_verifier_replays_and_evaluations_as_they_are():
    gen = make_generator(board_symmetries=True, opponents={"heuristic": 0.5}, opening_moves=2)
    table = gen.self_play(60)  # self-play, heuristic, random openings: every turn replays
    verifier = Verifier(decode, encode=encode, symmetric_views=True)
    assert verifier.verify(table).num_rows == table.num_rows and not verifier.rejected
    plain = Verifier(decode, encode=encode)  # replayed without the views: the prompts differ
    assert plain.verify(table).num_rows < table.num_rows and plain.rejected["prompt_mismatch"] > 0
    # evaluations show the board as it is: the same games as a generator without symmetries
    assert make_generator(board_symmetries=True, seed=5).evaluate(
        "tictactoe", "random", 20
    ) == make_generator(seed=5).evaluate("tictactoe", "random", 20)


def test_opened_games_are_credited_to_the_players_at_the_table_never_to_the_opening():
    """League play with random openings: Elo, PFSP and the training figures read each game's
    opponent from its rows, and an opening move is neither side's (a run crashed recording
    a result against a member named 'opening')."""
    gen = make_generator(
        opening_moves=3, opening_moves_min=1, opening_share=1.0, opponents={"heuristic": 0.3}
    )
    gen.add_opponent("snap-0", "snapshot-dir")
    table = gen.league_play(
        [("snap-0", "intermediate", "intermediate")] * 60 + [(SELF, "intermediate", "intermediate")] * 60
    )
    games = by_traj(table)
    assert all(rows[0]["policy_id"] == OPENING for rows in games.values())  # every game opened
    results = outcomes(table)
    assert len(results) == len(games) == 120
    assert {g["opponent"] for g in results} == {"snap-0", "heuristic", SELF}
    # each game's result is the learner's own rows' outcome, from its own seat
    mine = {}
    for traj, rows in games.items():
        own = [r for r in rows if r["policy_id"] == LEARNER]
        others = {r["policy_id"] for r in rows} - {LEARNER, OPENING}
        if others:  # against a member or heuristic: one seat each
            mine[traj] = (others.pop(), own[0]["role"], own[0]["outcome"])
    against = [g for g in results if g["opponent"] != SELF]
    assert sorted((g["opponent"], g["role"], g["outcome"]) for g in against) == sorted(mine.values())


def test_a_trained_turn_whose_prompt_is_not_its_games_observation_is_rejected():
    rows = make_generator(games=("tictactoe", "kuhn")).self_play(6).to_pylist()
    victim = next(r for r in rows if r["trainable"] and r["game"] == "kuhn")
    victim["prompt_ids"] = victim["prompt_ids"][:-1] + [ord("X")]  # a different last character
    verifier = Verifier(decode, encode=encode)
    kept = verifier.verify(schema.from_rows(rows))
    assert dict(verifier.rejected) == {"prompt_mismatch": 1}
    assert victim["traj_id"] not in set(kept["traj_id"].to_pylist())
    assert Verifier(decode).verify(schema.from_rows(rows)).num_rows == len(rows)  # unchecked without encode


def test_an_evaluation_with_a_seed_plays_the_same_games_whoever_plays_them():
    """The driver's evaluations pass a seed per (run seed, game, opponent): the same
    weights read the same figure at every evaluation, on any generator (a replacement, a
    resumed session's), so a curve moves with the weights alone; without one, each
    evaluation drew other games from the generator's own draws (the same weights read
    0.285, 0.300 and 0.240 against minimax)."""
    seed = "0/tictactoe/random"
    one, other = make_generator(seed=5), make_generator(seed=6)
    fixed = [one.evaluate("tictactoe", "random", 30, seed=seed) for _ in range(2)]
    fixed.append(other.evaluate("tictactoe", "random", 30, seed=seed))
    assert fixed[0] == fixed[1] == fixed[2]
    fresh = [one.evaluate("tictactoe", "random", 30) for _ in range(4)]
    assert len({(r["win"], r["draw"], r["loss"]) for r in fresh}) > 1
    # the seed deals only the evaluation's games: training's draws go on as without it
    a, b = make_generator(seed=5), make_generator(seed=5)
    a.evaluate("tictactoe", "random", 30, seed=seed)
    assert a.rng.getstate() == b.rng.getstate()
    a.evaluate("tictactoe", "random", 30)
    assert a.rng.getstate() != b.rng.getstate()
