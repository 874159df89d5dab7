"""SPIN's path without Ray or a model: the generator asks only the supervised stage's
prompts (task.prompts sft), the verifier scores the replies, and the buffer's builder pairs
each distinct wrong reply with the problem's supervised target; the config's checks."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from num2words import num2words

from actors.buffer import PreferenceLog, ReplayBuffer
from actors.generator import Generator
from actors.verifier import Verifier
from selfplay.builder import sft_examples, sft_problems
from selfplay.config import BufferConfig, BuilderConfig, ConfigError, TaskConfig, load_config
from selfplay.program import prompt_seeds
from selfplay.tasks import make_task
from tests.engines import BOS, decode, encode, rule_task_generator

TASK = make_task("words", max_value=999)
SPIN = ["task.name=words", "task.held_out=50", "learner.advantage=group", "builder.rows=spin"]
RUN = [
    *SPIN,
    "learner.reference=true",
    "task.prompts=sft",
    "sft.steps=10",
    "sft.examples=512",
    "learner.ref_refresh_every=5",
    "learner.broadcast_every=5",
]


def spin_generator(seeds: list[int], k: int = 4) -> Generator:
    """Every other reply is the number's words, the rest a wrong 'zero'."""
    calls = itertools.count()

    def rule(prompt: str) -> str:
        n = int(prompt.rstrip(":"))
        return num2words(n) if next(calls) % 2 else "zero"

    cfg = TaskConfig(name="words", params={"max_value": 999}, samples_per_prompt=k, prompts="sft")
    return rule_task_generator(rule, cfg, max_response_tokens=48, prompt_seeds=seeds)


def test_waves_ask_only_the_supervised_prompts_and_spin_pairs_the_wrong_replies_with_their_targets():
    labelled = sft_examples(TASK, lambda text, special: encode(text)[0 if special else 1 :], BOS, 8, 3, "r")
    # the rule engine's replies carry no eos: the targets drop theirs, so a correct reply's
    # tokens equal its target's and it makes no pair
    ids = labelled.column("response_ids").to_pylist()
    labelled = labelled.set_column(
        labelled.schema.get_field_index("response_ids"),
        labelled.schema.field("response_ids"),
        pa.array([i[:-1] for i in ids], labelled.schema.field("response_ids").type),
    )
    seeds = [s for s, _ in sft_problems(TASK, 8, 3)]
    gen = spin_generator(seeds)
    table = gen.task_play(16)
    assert set(table["seed"].to_pylist()) <= set(seeds)
    scored = Verifier(decode, task=TASK).training_turns(table)
    assert scored.num_rows == 64 and 0 < sum(scored["reward"].to_pylist()) < 64
    buf = ReplayBuffer(BufferConfig(min_size=1, max_staleness=0), builder=BuilderConfig(rows="spin"))
    buf.set_targets(labelled)
    kept = buf.add(scored)
    pairs = buf.sample(kept, learner_version=0).to_pylist()
    targets = {r["reference_id"]: r["response_text"] for r in labelled.to_pylist()}
    # one pair per group that has a wrong reply: 'zero' is wrong for every number but 0
    assert len(pairs) == len({r["group_id"] for r in pairs}) > 0
    wrong = {r["group_id"] for r in scored.to_pylist() if r["response_text"] == "zero" and r["reward"] < 1}
    assert {p["group_id"] for p in pairs} == wrong  # every such group, each once
    for p in pairs:
        assert p["label"] == "dpo" and p["rejected_text"] == "zero"
        assert p["response_text"] == targets[p["reference_id"]] != "zero"


def test_pairs_filled_from_the_variance_filters_reserve_are_written_too(tmp_path):
    """Every reply wrong: each group's rewards agree, so the variance filter holds its pair
    back, and the buffer fills batches from that reserve; the learner trains on those
    pairs, so RUN_DIR/preferences has them (only pairs admitted at once went there)."""
    labelled = sft_examples(TASK, lambda text, special: encode(text)[0 if special else 1 :], BOS, 8, 3, "r")
    seeds = [s for s, _ in sft_problems(TASK, 8, 3)]
    cfg = TaskConfig(name="words", params={"max_value": 999}, samples_per_prompt=4, prompts="sft")
    gen = rule_task_generator(lambda prompt: "zero", cfg, max_response_tokens=48, prompt_seeds=seeds)
    scored = Verifier(decode, task=TASK).training_turns(gen.task_play(8))
    log = PreferenceLog(tmp_path, decode, "spin", flush_rows=10**6)
    builder = BuilderConfig(rows="spin", variance_filter=True, fill_after=1)
    buf = ReplayBuffer(BufferConfig(min_size=1, max_staleness=0), builder=builder, preferences=log)
    buf.set_targets(labelled)
    assert buf.add(scored) == 0 and buf.reserve.num_rows > 0  # all held back
    batch = buf.sample(4, learner_version=0)
    assert batch is not None and buf.stats()["filled_from_reserve"] >= 4
    log.flush()
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert parts, "no preference pairs written"
    written = pa.concat_tables([pq.read_table(p) for p in parts])
    assert written.num_rows == buf.stats()["filled_from_reserve"]
    assert set(written["rejected"].to_pylist()) == {"zero"} and set(written["method"].to_pylist()) == {"spin"}


def test_prompt_seeds_are_the_supervised_stages_problems_only_with_prompts_sft():
    cfg = load_config(None, RUN)
    assert prompt_seeds(cfg) == [s for s, _ in sft_problems(TASK, 512, cfg.seed)]
    assert prompt_seeds(load_config(None, [*RUN, "task.prompts=train", "builder.rows=rl"])) is None


@pytest.mark.parametrize(
    "overrides, message",
    [
        (SPIN, "learner.reference: builder.rows spin trains pairs against a reference"),
        (
            [*SPIN, "learner.reference=true"],
            "task.prompts: builder.rows spin pairs samples with the supervised",
        ),
        ([*RUN, "sft.steps=0"], "task.prompts: builder.rows spin pairs samples"),
        ([*RUN, "learner.beta=0"], "learner.beta: must be > 0"),
        # the generators sample the reference iterate, from the supervised stage's end on
        ([*RUN, "learner.ref_refresh_every=0"], r"learner.ref_refresh_every: .* \(got 0, 5, 10\)"),
        ([*RUN, "learner.broadcast_every=1"], r"learner.ref_refresh_every: .* \(got 5, 1, 10\)"),
        ([*RUN, "sft.steps=12"], r"learner.ref_refresh_every: .* \(got 5, 5, 12\)"),
        # one supervised target per problem: a checker's samples were paired with the solver's
        (
            [*RUN, "task.name=solver_checker", "task.params={}"],
            r"builder.rows: spin pairs .* solver_checker has roles \['solver', 'checker'\]",
        ),
        ([*RUN, "learner.preference_loss=kto"], "learner.preference_loss: must be one of"),
    ],
)
def test_a_spin_run_is_checked_field_by_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)
    assert load_config(None, RUN).builder.rows == "spin"
