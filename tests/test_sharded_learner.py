"""A data-parallel learner group sharded by FSDP2 (Learner(sharded=True)): two ranks, each
a process of its own on a gloo group, take the same steps on the same batches as one
unsharded learner: the same losses, gradient norms, metrics and weights, within fp32
summation error; for policy-gradient turns (every weight trained, or LoRA adapters) and for
preference pairs; and a saved group resumes to the same next step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from bench.gpu_learner import synthetic_batch
from learner.group import GroupLearner
from learner.learner import Learner, even_spans, rank_spans
from selfplay import schema
from selfplay.config import load_config
from selfplay.model import create_default_model
from selfplay.net import free_port
from selfplay.transport import LocalTransport
from tests.rows import make_row

SETTINGS = [
    "learner.advantage=gae",  # a value head, and GAE reading every row's V(s)
    "learner.kl_coef=0.1",  # a reference, sharded too
    "learner.kl_estimator=k2",
    "learner.kl_placement=loss",
    "learner.entropy_coef=0.01",
    "learner.micro_batch_size=4",
    "learner.bf16=false",
    "learner.lr=1e-2",
    "buffer.whole_games=true",
    "learner.ema_decay=0.5",  # the weights' moving average, sharded as the weights
]
# (turns, seed): even shares, uneven ones, and one turn (rank 1's share is empty: it still
# runs its passes, weighing nothing)
BATCHES = [(12, 0), (13, 1), (1, 2)]
METRICS = ("loss", "pg_loss", "entropy", "kl_ref", "value_loss", "explained_variance", "adv_mean", "tokens")
# preference pairs (rows labelled dpo): DPO against the reference, an NLL term on the
# chosen replies, 2 pairs a micro-batch; 5 pairs (shares of 3 and 2), then 1 (an empty share)
PAIR_SETTINGS = [
    "learner.reference=true",
    "learner.chosen_nll_coef=0.1",
    "learner.micro_batch_size=2",
    "learner.bf16=false",
    "learner.lr=1e-2",
]
PAIR_BATCHES = [(5, 0), (1, 1)]
# LoRA on top of SETTINGS: rank-4 adapters on every projection of the frozen model, the
# value head trained whole; the reference is a copy of the LoRA model
LORA_SETTINGS = ["learner.lora_rank=4"]
OFFLOAD_SETTINGS = ["learner.optimizer_offload=true"]
PAIR_METRICS = ("loss", "preference_loss", "chosen_nll", "chosen_logratio", "rejected_logratio")
PAIR_METRICS += ("reward_margin", "reward_accuracy", "pairs", "grad_norm", "step")


def pair_batch(n: int, seed: int):
    """n preference pairs of random tokens, replies of 2 or 3 tokens."""
    g = torch.Generator().manual_seed(seed)

    def ids(k: int) -> list[int]:
        return torch.randint(10, 90, (k,), generator=g).tolist()

    rows = []
    for i in range(n):
        chosen = ids(2 + i % 2)
        rows.append(
            make_row(
                traj_id=f"p{seed}-{i}",
                prompt_ids=[1, *ids(4)],
                response_ids=chosen,
                behaviour_logprobs=[0.0] * len(chosen),
                rejected_ids=ids(3 - i % 2),
                label="dpo",
            )
        )
    return schema.from_rows(rows)


def train_pairs(learner: Learner) -> list[dict]:
    return [
        {k: m[k] for k in PAIR_METRICS}
        for m in (learner.train_step(pair_batch(n, seed)) for n, seed in PAIR_BATCHES)
    ]


def test_spans_share_the_rows_evenly_and_every_rank_runs_as_many_passes():
    assert even_spans(0, 7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert even_spans(2, 3, 2) == [(2, 3), (3, 3)]
    assert rank_spans(12, 4, 0, 2) == [(0, 3), (3, 6)] and rank_spans(12, 4, 1, 2) == [(6, 9), (9, 12)]
    assert rank_spans(13, 4, 0, 2) == [(0, 4), (4, 7)] and rank_spans(13, 4, 1, 2) == [(7, 10), (10, 13)]
    assert rank_spans(3, 1, 0, 2) == [(0, 1), (1, 2)] and rank_spans(3, 1, 1, 2) == [(2, 3), (3, 3)]
    assert rank_spans(5, 5, 0, 1) == [(0, 5)]
    for n, size, world in [(13, 4, 3), (100, 7, 4), (3, 1, 2)]:
        spans = [rank_spans(n, size, r, world) for r in range(world)]
        assert len({len(s) for s in spans}) == 1  # the same number of passes on every rank
        covered = [i for s in spans for a, b in s for i in range(a, b)]
        assert covered == list(range(n)) and all(b - a <= size for s in spans for a, b in s)


def train(learner: Learner, checkpoint: str | None = None) -> list[dict]:
    """The steps of BATCHES, saving the learner after the first to `checkpoint`."""
    steps = []
    for n, seed in BATCHES:
        m = learner.train_step(synthetic_batch(n, 6, 2, 100, seed))
        steps.append({k: m.get(k) for k in (*METRICS, "grad_norm", "step")})  # EV: none for one turn
        if checkpoint and len(steps) == 1:
            learner.save(checkpoint)
    return steps


def rank_main(rank: int, world: int, port: int, model_dir: str, out: str, mode: str, settings: list) -> None:
    """One rank. mode "train": the steps of BATCHES, a checkpoint after the first;
    "resume": a new group from that checkpoint takes the second step; "pairs": the steps
    of PAIR_BATCHES."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = load_config(None, settings)
        start = f"{out}/ckpt/model" if mode == "resume" else model_dir
        learner = Learner(cfg.learner, cfg.model, start, seed=0, sharded=True)
        if mode == "pairs":
            steps = train_pairs(learner)
            state = learner.policy_state()
        elif mode == "train":
            steps = train(learner, f"{out}/ckpt")
            state = learner.policy_state()  # every rank gathers; rank 0 keeps and writes
        else:
            learner.load(f"{out}/ckpt")
            n, seed = BATCHES[1]
            m = learner.train_step(synthetic_batch(n, 6, 2, 100, seed))
            steps = [{k: m.get(k) for k in (*METRICS, "grad_norm", "step")}]
            state = learner.policy_state()
        averaged = learner.policy_state(averaged=True) if learner.ema is not None else {}
        assert (rank == 0) == bool(state)  # rank 0 alone keeps the gathered weights
        if rank == 0:
            save_file({k: v.contiguous() for k, v in state.items()}, f"{out}/{mode}.safetensors")
            if averaged:
                save_file(
                    {k: v.contiguous() for k, v in averaged.items()}, f"{out}/{mode}_averaged.safetensors"
                )
            Path(out, f"{mode}.json").write_text(
                json.dumps({"steps": steps, "flops": learner.flops_per_token})
            )
    finally:
        dist.destroy_process_group()


# Ranks fork from one server process that imported these once (a spawned rank spent ~5 s of
# CPU importing them, 7 groups of 2 ranks in this module); a forked rank still starts with
# no threads, no Ray and no process group of the test's process.
mp.set_forkserver_preload(["torch", "learner.learner", "tests.test_sharded_learner"])


def run_ranks(model_dir: str, out: Path, mode: str, settings: list, world: int = 2) -> tuple[dict, dict]:
    mp.start_processes(
        rank_main,
        args=(world, free_port(), model_dir, str(out), mode, settings),
        nprocs=world,
        start_method="forkserver",
    )
    return json.loads((out / f"{mode}.json").read_text()), load_file(out / f"{mode}.safetensors")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(create_default_model(tmp_path_factory.mktemp("m"), preset="1m", max_positions=64))


@pytest.fixture(scope="module", params=["full", "lora", "offload"])
def group(request, model_dir, tmp_path_factory) -> tuple[Path, dict, dict, list]:
    """Two sharded ranks trained on BATCHES (a checkpoint after the first step): every
    weight trained, LoRA adapters on the frozen model (the reference a LoRA model too), or
    every weight trained with FSDP2's CPU offload (weights, gradients and optimiser state
    in host memory, the step on the host: on a CPU group the same memory, the same steps)."""
    settings = SETTINGS + {"full": [], "lora": LORA_SETTINGS, "offload": OFFLOAD_SETTINGS}[request.param]
    out = tmp_path_factory.mktemp(f"group-{request.param}")
    return (out, *run_ranks(model_dir, out, "train", settings), settings)


def test_two_sharded_ranks_take_the_steps_one_learner_takes(model_dir, group):
    _, sharded, weights, settings = group
    cfg = load_config(None, settings)
    one = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    expected = train(one)
    assert sharded["flops"] == one.flops_per_token
    for got, want in zip(sharded["steps"], expected, strict=True):
        for k, v in want.items():  # None: not reported (explained variance of one turn)
            assert got[k] == (None if v is None else pytest.approx(v, rel=1e-4, abs=1e-5)), (k, got[k], v)
    state = one.policy_state()
    assert sorted(weights) == sorted(state)
    moved = max((state[k] - one_initial).abs().max().item() for k, one_initial in initial(model_dir).items())
    assert moved > 1e-3  # the steps moved the weights...
    worst = max((weights[k] - state[k]).abs().max().item() for k in state)
    # ...and the two learners moved them alike: within 1% of what the steps moved (Adam
    # divides each gradient by its own scale, so summation-order differences of ~1e-7 in a
    # near-zero gradient show as ~1e-5 in that weight's step at lr 1e-2)
    assert worst < moved / 100, (worst, moved)
    # the weights' average, kept shard by shard, is one learner's average
    out = group[0]
    averaged, one_averaged = load_file(out / "train_averaged.safetensors"), one.policy_state(averaged=True)
    assert sorted(averaged) == sorted(one_averaged)
    lag = max((one_averaged[k] - state[k]).abs().max().item() for k in state)
    worst = max((averaged[k] - one_averaged[k]).abs().max().item() for k in state)
    assert lag > 1e-3 and worst < moved / 100, (worst, lag, moved)


def test_two_sharded_ranks_train_preference_pairs_as_one_learner_does(model_dir, tmp_path):
    sharded, weights = run_ranks(model_dir, tmp_path, "pairs", PAIR_SETTINGS)
    cfg = load_config(None, PAIR_SETTINGS)
    one = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    expected = train_pairs(one)
    assert [s["pairs"] for s in sharded["steps"]] == [5, 1]
    for got, want in zip(sharded["steps"], expected, strict=True):
        for k, v in want.items():
            assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-5), (k, got[k], v)
    state = one.policy_state()
    moved = max((state[k] - w).abs().max().item() for k, w in initial(model_dir).items())
    worst = max((weights[k] - state[k]).abs().max().item() for k in state)
    # within a tenth of what the steps moved: over two steps Adam moves a weight by about lr
    # whatever its gradient's size, so a near-zero gradient that differs by summation order
    # (~1e-7) shows; the metrics above (losses and gradient norm of both steps) agree to 1e-4
    assert moved > 1e-3 and worst < moved / 10, (worst, moved)


def initial(model_dir: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()


def test_a_sharded_group_saved_and_resumed_takes_the_same_next_step(model_dir, group):
    """The checkpoint holds the whole state (model, value head, reference, the weights'
    average, the optimiser's moments by parameter name): a new group resumed from it takes
    the step the saved one took next, and averages it as the saved one did."""
    out, trained, _, settings = group
    assert (out / "ckpt" / "model" / "config.json").exists() and (out / "ckpt" / "optimizer.pt").exists()
    assert (out / "ckpt" / "lora.safetensors").exists() == ("learner.lora_rank=4" in settings)
    assert (out / "ckpt" / "ema.safetensors").exists() and (
        out / "ckpt" / "averaged" / "config.json"
    ).exists()
    resumed, _ = run_ranks(model_dir, out, "resume", settings)
    assert resumed["steps"][0]["step"] == trained["steps"][1]["step"] == 2
    for k, v in trained["steps"][1].items():
        assert resumed["steps"][0][k] == pytest.approx(v, rel=1e-6, abs=1e-7), k
    cfg = load_config(None, settings)
    one = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    for n, seed in BATCHES[:2]:
        one.train_step(synthetic_batch(n, 6, 2, 100, seed))
    want, got = one.policy_state(averaged=True), load_file(out / "resume_averaged.safetensors")
    moved = max((want[k] - w).abs().max().item() for k, w in initial(model_dir).items())
    assert max((got[k] - want[k]).abs().max().item() for k in want) < moved / 100


class Rank:
    """A worker rank as GroupLearner sees one: records each call; may fail."""

    def __init__(self, fail: bool = False):
        self.calls: list = []
        self.fail = fail

    def run(self, method: str, *args) -> None:
        self.calls.append((method, args))
        if self.fail:
            raise RuntimeError("rank 1 failed")


class RankZero:
    """Stands for rank 0's Learner."""

    def __init__(self):
        self.version = 0
        self.calls: list = []

    def export(self):
        self.calls.append(("export", ()))
        return b"weights", "checksum"

    def set_lr(self, lr: float) -> None:
        self.calls.append(("set_lr", (lr,)))


def test_a_group_learner_makes_each_together_call_on_every_rank_and_raises_a_ranks_error():
    zero, ranks = RankZero(), [Rank(), Rank()]
    group = GroupLearner(zero, ranks, LocalTransport())
    assert group.export() == (b"weights", "checksum")  # rank 0's answer is the group's
    assert zero.calls == ranks[0].calls == ranks[1].calls == [("export", ())]
    group.version += 1  # attributes are rank 0's, set ones too
    assert zero.version == 1 and set(vars(group)) == {"learner", "workers", "transport"}
    failing = GroupLearner(RankZero(), [Rank(fail=True)], LocalTransport())
    with pytest.raises(RuntimeError, match="rank 1 failed"):
        failing.set_lr(0.1)
    assert failing.learner.calls == [("set_lr", (0.1,))]  # rank 0 made it too


def test_every_call_that_must_run_on_every_rank_does():
    """Each of them, by name (a step, a save or a reference reset made on rank 0 alone
    would leave the other ranks waiting in a collective, or their shards behind)."""

    class Anything:  # stands for rank 0's Learner: records any call
        def __init__(self):
            self.calls: list = []

        def __getattr__(self, name):
            return lambda *args: self.calls.append((name, args))

    names = ["train_step", "export", "export_tensors", "save", "save_model", "reset_reference", "set_lr"]
    zero, ranks = Anything(), [Rank(), Rank()]
    group = GroupLearner(zero, ranks, LocalTransport())
    for name in names:
        getattr(group, name)("x")
    assert zero.calls == ranks[0].calls == ranks[1].calls == [(name, ("x",)) for name in names]
