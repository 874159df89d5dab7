"""Verifier: replays every trajectory by the game's rules, rejects malformed ones with a
counted reason, and attaches rewards and returns. A task's reply is scored instead: the
problem is drawn again from its seed (its id and the prompt of the row's role must match
what was played), and the task's scorer attaches its parts (`scores`), the total as the
reward, and the validity flag (`illegal` when the reply was malformed); scorer failures (a
sandbox timeout, say) count by reason. A task that judges replies by each other
(solver_checker's `score_group`) is scored one group at a time, once its rows passed; a
chain task's trajectory (refine: a turn per role) is checked turn by turn and scored whole.
Trajectories arrive from generators and go on to the buffer; the driver never sees them."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict, deque
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray

from selfplay import schema
from selfplay.builder import group_means
from selfplay.files import write_atomic
from selfplay.games import make_game
from selfplay.league import SKILL_TOKENS
from selfplay.metrics import ray_metric
from selfplay.rewards import overlong_penalty, returns_to_go
from selfplay.tasks import reply_tokens, task_of
from selfplay.tasks.base import Score, ScoreCache, role_prompts
from selfplay.tasks.judges import RULES, SELF_JUDGE
from selfplay.text import text_codec

REPLACEMENT = "\ufffd"  # what decoding an incomplete UTF-8 sequence gives


class Verifier:
    """Rule-based verifier for the built-in games. `decode` turns response ids back into
    text, so a trajectory whose text does not match its tokens is caught. A trajectory id
    seen among the last `remember` is rejected as a duplicate (a retried generator call
    must not count a game twice)."""

    def __init__(
        self,
        decode,
        remember: int = 200_000,
        task=None,
        encode=None,
        overlong=(0, 0, 0.0),
        self_judged=False,
        symmetric_views=False,
        cut_at: int = 0,
    ):
        """`task`: the run's task (selfplay/tasks), which scores its rows; None: games only.
        `encode`: text -> prompt ids as the generators encode prompts; with it, a trained
        turn's prompt must be its game's observation (after an optional skill prefix).
        `overlong`: (max reply tokens, buffer, coef), a task reply's length guard
        (rewards.overlong_penalty; buffer 0: none). `self_judged` (task.judge self): a
        reply's reward is the policy's own verdict on it (its judge role's rubric points),
        which the generator sent as the `self_judge` score (a reply without a readable one
        is rejected, `unrated`); the task's scorer still scores it, its parts kept beside
        the verdict and its total as `rules`. `symmetric_views` (generator.board_symmetries):
        games are replayed as the generators dealt their training games, each turn's board
        shown in the view its seed draws. `cut_at` (task.truncated zero): the reply token limit;
        a task reply that reaches it without an end of sequence (its last token decodes to
        text: not a special one) scores 0, invalid, reason `truncated`; 0: scored as written."""
        self.cut_at = cut_at
        self.decode = decode
        self.symmetric_views = symmetric_views
        self.self_judged = self_judged
        self.overlong = overlong
        self.encode = encode
        self.task = task
        self.score = ScoreCache(task.score) if task is not None else None  # one reply at a time
        self.grouped = hasattr(task, "score_group")  # or a group at a time (solver_checker)
        self.score_reasons: Counter = Counter()  # why replies scored 0 without running (timeout, ...)
        self.rejected: Counter = Counter()
        self.accepted = 0
        self.accepted_turns = 0
        self.forwarded_turns = 0  # trainable turns handed on to the buffer
        self.received_by: Counter = Counter()  # trajectories received, by generator name
        self.seen: set[str] = set()
        self.recent: deque[str] = deque()
        self.remember = remember

    @classmethod
    def for_model(
        cls,
        model_path: str,
        task=None,
        overlong=(0, 0, 0.0),
        self_judged=False,
        symmetric_views=False,
        cut_at=0,
    ) -> Verifier:
        """Decode as vLLM renders output text: special tokens (eos) dropped."""
        encode, decode = text_codec(model_path)
        return cls(
            decode,
            task=task,
            encode=encode,
            overlong=overlong,
            self_judged=self_judged,
            symmetric_views=symmetric_views,
            cut_at=cut_at,
        )

    def verify(self, table: pa.Table) -> pa.Table:
        """The accepted turns of `table`, with rewards and returns attached."""
        by_traj: dict[str, list[dict]] = defaultdict(list)
        for row in table.to_pylist():
            by_traj[row["traj_id"]].append(row)
        kept = []
        for traj_id, rows in by_traj.items():
            rows.sort(key=lambda r: r["turn"])
            self.received_by[rows[0]["generator_id"]] += 1
            check = self._check if rows[0]["task"] is None else self._check_task
            reason = "duplicate" if traj_id in self.seen else check(rows)
            self._remember(traj_id)
            if reason:
                self.rejected[reason] += 1
                continue
            kept.extend(rows)
            self.accepted += 1
        if self.grouped:
            self._score_groups([r for r in kept if r["task"] is not None])
        self.accepted_turns += len(kept)
        return schema.from_rows(kept)

    def training_turns(self, table: pa.Table) -> pa.Table:
        """What goes on to the buffer: the trainable turns (the learner's own) of the
        accepted trajectories. A league opponent's or scripted player's turns are verified
        with their game but never trained on, so they take no room, rate or staleness in
        the buffer. A task's rows all go on (competitive self-play: a league snapshot's replies
        are what the builder compares the learner's with; only the learner's become rows)."""
        accepted = self.verify(table)
        trainable = accepted.filter(pc.field("trainable"))
        self.forwarded_turns += trainable.num_rows
        return accepted if self.task is not None else trainable

    def _remember(self, traj_id: str) -> None:
        if traj_id in self.seen:
            return
        self.seen.add(traj_id)
        self.recent.append(traj_id)
        if len(self.recent) > self.remember:
            self.seen.discard(self.recent.popleft())

    def _check(self, rows: list[dict]) -> str | None:
        """Replay `rows`; returns a rejection reason, or None after attaching rewards."""
        try:
            game = make_game(rows[0]["game"], rows[0]["seed"], self.symmetric_views)
        except ValueError:
            return "unknown_game"
        if any((r["game"], r["seed"]) != (rows[0]["game"], rows[0]["seed"]) for r in rows):
            return "mixed_game"  # replayed as the first row's game: another's row would train as it
        if [r["turn"] for r in rows] != list(range(len(rows))):
            return "turns_not_contiguous"
        for row in rows:
            if game.is_terminal:
                return "moves_after_end"
            if row["role"] != game.current_player:
                return "wrong_role"
            if row["trainable"] and (reason := self._check_tokens(row) or self._check_prompt(row, game)):
                return reason
            legal = game.apply_text(row["response_text"])
            if legal == row["illegal"]:
                return "illegal_flag_mismatch"
        if not game.is_terminal:
            return "incomplete"
        returns = game.returns()
        if any(r["outcome"] != returns[r["role"]] for r in rows):
            return "outcome_mismatch"
        for role in range(game.num_players):
            mine = [r for r in rows if r["role"] == role]
            rewards = [0.0] * len(mine)
            if mine:
                rewards[-1] = returns[role]  # zero-sum games pay at the end
            for r, reward, ret in zip(mine, rewards, returns_to_go(rewards)):
                r["reward"], r["ret"] = reward, ret
        return None

    def _check_prompt(self, row: dict, game) -> str | None:
        """The learner trains on `prompt_ids`: they must encode what the game showed this
        seat at this turn, bare or after a skill prefix (league.SKILL_TOKENS)."""
        if self.encode is None:
            return None
        observation = game.observation(row["role"])
        prefixes = ("", *SKILL_TOKENS.values())  # bare first: most prompts have no prefix
        if any(row["prompt_ids"] == self.encode(p + observation) for p in prefixes):
            return None
        return "prompt_mismatch"

    def _check_tokens(self, row: dict) -> str | None:
        """A sampled reply's tokens, log-probs and text agree. A byte-level tokenizer's
        reply cut by the token limit inside a multi-byte character decodes here with a
        trailing U+FFFD, which vLLM's incremental detokenizer never emits (it holds the
        incomplete bytes back): that tail is not a mismatch."""
        if len(row["response_ids"]) != len(row["behaviour_logprobs"]):
            return "logprob_length"
        if not all(math.isfinite(lp) and lp <= 0 for lp in row["behaviour_logprobs"]):
            return "bad_logprob"
        text = self.decode(row["response_ids"])
        if text != row["response_text"] and text.rstrip(REPLACEMENT) != row["response_text"]:
            return "text_mismatch"
        return None

    def _check_task(self, rows: list[dict]) -> str | None:
        """Score one task reply (a one-row trajectory); returns a rejection reason, or None
        after attaching the scorer's parts, reward and validity."""
        if self.task is not None and getattr(self.task, "chain", False) and rows[0]["task"] == self.task.name:
            return self._check_chain(rows)
        (row, *more) = rows
        if more or row["turn"] != 0:
            return "task_turns"
        if self.task is None or row["task"] != self.task.name:
            return "unknown_task"
        problem = self.task.problem(row["seed"])
        if problem.id != row["reference_id"]:
            return "reference_mismatch"
        prompts = role_prompts(self.task, problem)
        if not 0 <= row["role"] < len(prompts):
            return "unknown_role"
        if self.decode(row["prompt_ids"]) != prompts[row["role"]]:
            return "prompt_mismatch"
        if reason := self._check_tokens(row):
            return reason
        rated = dict(row["scores"] or ()).get(SELF_JUDGE) if self.self_judged else None  # a map column: pairs
        if self.self_judged and not (rated is not None and 0 <= rated <= 1):
            return "unrated"
        if not self.grouped:  # else scored with its group (verify)
            self._attach(row, self.score(problem.prompt, row["response_text"], problem.reference), rated)
        return None

    def _check_chain(self, rows: list[dict]) -> str | None:
        """A chain task's trajectory (refine: answer, critique, refined answer): turn t played
        by role t, every role once, all of one problem and group, each prompt the task's for
        its role after the replies before it; scored together (`score_chain`)."""
        roles = len(self.task.roles)
        if [r["turn"] for r in rows] != list(range(roles)) or any(r["role"] != r["turn"] for r in rows):
            return "task_turns"
        problem = self.task.problem(rows[0]["seed"])
        if any(
            (r["seed"], r["reference_id"], r["group_id"])
            != (rows[0]["seed"], problem.id, rows[0]["group_id"])
            for r in rows
        ):
            return "reference_mismatch"
        texts = [r["response_text"] for r in rows]
        for row in rows:
            if self.decode(row["prompt_ids"]) != self.task.role_prompt(
                problem, row["role"], texts[: row["role"]]
            ):
                return "prompt_mismatch"
            if reason := self._check_tokens(row):
                return reason
        for row, score in zip(rows, self.task.score_chain(problem, texts)):
            self._attach(row, score)
        return None

    def _score_groups(self, rows: list[dict]) -> None:
        """Score a group-scored task's accepted rows (solver_checker: each reply is judged by
        the others of its problem) one group at a time. Rows already passed _check_task, so
        each group's rows name one problem (group ids are per problem; a group whose rows
        disagree is split by problem)."""
        groups: dict[tuple, list[dict]] = defaultdict(list)
        for row in rows:
            groups[(row["group_id"], row["reference_id"])].append(row)
        for members in groups.values():
            problem = self.task.problem(members[0]["seed"])
            scores = self.task.score_group(problem, [(r["role"], r["response_text"]) for r in members])
            for row, score in zip(members, scores):
                self._attach(row, score)

    def _attach(self, row: dict, score, rated: float | None = None) -> None:
        """The score's parts, its total as the outcome, and the reward: the total (or the
        policy's own verdict `rated`, self-rewarding: the total kept as `rules`) plus the length
        guard where one is set (its penalty kept as the `overlong` part)."""
        ids = row["response_ids"]
        if self.cut_at and len(ids) >= self.cut_at and self.decode(ids[-1:]):  # cut off, not ended
            score, rated = Score(total=0.0, parts=score.parts, valid=False, reason="truncated"), None
        if score.reason:
            self.score_reasons[score.reason] += 1
        parts, reward = score.parts, score.total
        if rated is not None:
            parts, reward = {**parts, RULES: score.total, SELF_JUDGE: rated}, rated
        max_tokens, buffer, coef = self.overlong
        if buffer:
            penalty = coef * overlong_penalty(len(row["response_ids"]), max_tokens, buffer)
            parts, reward = {**parts, "overlong": penalty}, reward + penalty
        outcome = score.total if rated is None else rated
        row.update(scores=parts, reward=reward, ret=reward, outcome=outcome, illegal=not score.valid)

    def stats(self) -> dict:
        """Trajectories accepted and rejected (by reason), turns accepted and turns
        forwarded for training."""
        return {
            "accepted": self.accepted,
            "accepted_turns": self.accepted_turns,
            "forwarded_turns": self.forwarded_turns,
            "received": self.accepted + sum(self.rejected.values()),
            "received_by": dict(self.received_by),
            **{f"rejected_{k}": v for k, v in self.rejected.items()},
            **{f"scored_zero_{k}": v for k, v in self.score_reasons.items()},
        }

    def counters(self) -> dict:
        """What `load_counters` restores: the counts, so a resumed run's books go on."""
        return {
            "accepted": self.accepted,
            "accepted_turns": self.accepted_turns,
            "forwarded_turns": self.forwarded_turns,
            "rejected": dict(self.rejected),
            "score_reasons": dict(self.score_reasons),
            "received_by": dict(self.received_by),
        }

    def load_counters(self, saved: dict) -> None:
        self.accepted, self.accepted_turns = saved["accepted"], saved["accepted_turns"]
        self.forwarded_turns = saved["forwarded_turns"]
        self.rejected = Counter(saved["rejected"])
        self.score_reasons = Counter(saved["score_reasons"])
        self.received_by = Counter(saved["received_by"])


STATE_FILE = "verifier_state.json"


@ray.remote(num_cpus=0.1)
class VerifierActor:
    def __init__(
        self,
        model_path: str,
        buffer,
        run_id: str,
        task_cfg=None,
        resume_dir: str | None = None,
        max_tokens: int = 0,
        symmetric_views: bool = False,
    ):
        """`max_tokens`: the generators' reply limit, from which a task's (tasks.reply_tokens)
        is found, which its length guard counts back from;
        `symmetric_views`: generator.board_symmetries (Verifier)."""
        task = task_of(task_cfg) if task_cfg and task_cfg.name else None
        limit = reply_tokens(task, max_tokens) if task else 0
        overlong = (limit, task_cfg.overlong_buffer, task_cfg.overlong_coef) if task else (0, 0, 0.0)
        self.verifier = Verifier.for_model(
            model_path,
            task,
            overlong,
            task is not None and task_cfg.judge == "self",
            symmetric_views,
            cut_at=limit if task and task_cfg.truncated == "zero" else 0,
        )
        if resume_dir and (Path(resume_dir) / STATE_FILE).exists():
            self.verifier.load_counters(json.loads((Path(resume_dir) / STATE_FILE).read_text()))
        self.buffer = buffer
        self.rejected = ray_metric("counter", "verifier_rejected", {"run": run_id}, ("reason",))
        self.accepted = ray_metric("counter", "verifier_accepted", {"run": run_id})

    def verify(self, blob: bytes) -> dict:
        """Verify a batch and forward its training turns to the buffer; returns the turns
        the buffer kept and, for a task, each group's (problem seed, mean reward, reward std,
        samples: builder.group_means), which the generator's hard-prompt pool and curriculum
        read."""
        before, accepted_before = Counter(self.verifier.rejected), self.verifier.accepted
        accepted = self.verifier.training_turns(schema.from_ipc(blob))
        for reason, n in (self.verifier.rejected - before).items():
            self.rejected.inc(n, tags={"reason": reason})
        if self.verifier.accepted > accepted_before:
            self.accepted.inc(self.verifier.accepted - accepted_before)
        kept = ray.get(self.buffer.add.remote(schema.to_ipc(accepted))) if accepted.num_rows else 0
        return {"kept": kept, "groups": group_means(accepted)}

    def stats(self) -> dict:
        return self.verifier.stats()

    def save(self, directory: str) -> None:
        """The verifier's counters and the buffer, saved together: no verification runs
        between the two (this actor takes one call at a time and every insert comes
        through it), so the checkpoint's books balance."""
        write_atomic(Path(directory) / STATE_FILE, json.dumps(self.verifier.counters()))
        ray.get(self.buffer.save.remote(directory))
