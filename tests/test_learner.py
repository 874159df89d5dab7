"""The learner's reference policy and batch diagnostics, on a tiny model (no Ray, no vLLM)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pyarrow as pa
import pytest
import torch

from learner.learner import Learner, collate, math_attention, opponent_results, sequence_logprobs
from selfplay import schema
from selfplay.config import ModelConfig, load_config
from selfplay.model import PRESETS, create_default_model
from tests.rows import make_row, make_task_row


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(create_default_model(tmp_path_factory.mktemp("m"), preset="1m", max_positions=64))


def batch():
    """Two kuhn turns of one role with opposite returns: advantages +-1 from the first step."""
    rows = [
        make_row(game="kuhn", response_text="b", ret=1.0),
        make_row(game="kuhn", response_text="p", ret=-1.0),
        make_row(game="tictactoe", response_text="5", ret=0.0),
    ]
    return schema.from_rows(rows)


def turns(n: int, prompt_len: int) -> pa.Table:
    """`n` turns of `prompt_len`-token prompts (TicTacToe's are 23), returns +-1."""
    return schema.from_rows(
        [
            make_row(
                traj_id=f"t{i}",
                prompt_ids=[1] + [6 + (i + j) % 90 for j in range(prompt_len - 1)],
                ret=1.0 - 2 * (i % 2),
            )
            for i in range(n)
        ]
    )


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_masked_rows_reply_is_scored_by_the_softmax_over_its_allowed_tokens(model_dir):
    # legal-move masking: the engine drew the reply from `allowed_ids` alone, so the learner's
    # log-prob of it (the PPO ratio's numerator) is the softmax over those tokens; a row
    # without them keeps the whole vocabulary
    cfg = load_config(None, [])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    rows = [
        make_row(prompt_ids=[1, 2, 3], response_ids=[5], allowed_ids=[5, 7, 9]),
        make_row(prompt_ids=[1, 2, 3], response_ids=[5]),
    ]
    with torch.no_grad():
        logp, entropy = sequence_logprobs(learner.model, collate(rows, learner.pad_id), temperature=0.5)
        logits = learner.model(input_ids=torch.tensor([[1, 2, 3, 5]])).logits[0, 2].float() / 0.5
    masked = torch.log_softmax(logits[[5, 7, 9]], -1)
    assert logp[0, 2].item() == pytest.approx(masked[0].item(), abs=1e-5)
    assert logp[1, 2].item() == pytest.approx(torch.log_softmax(logits, -1)[5].item(), abs=1e-5)
    assert entropy[0, 2].item() == pytest.approx(-(masked.exp() * masked).sum().item(), abs=1e-5)
    assert entropy[0, 2].item() <= math.log(3) < entropy[1, 2].item()


def test_the_kl_reference_follows_the_policy_every_k_steps(model_dir):
    cfg = load_config(None, ["learner.kl_coef=0.1", "learner.ref_refresh_every=2", "learner.lr=1e-2"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    learner.train_step(batch())
    assert not same_weights(learner.model, learner.ref)  # step 1: still the initial policy
    learner.train_step(batch())
    assert same_weights(learner.model, learner.ref)  # step 2: refreshed
    m = learner.train_step(batch())
    assert not same_weights(learner.model, learner.ref) and m["kl_ref"] >= 0


def test_a_reference_that_is_never_refreshed_stays_the_initial_policy(model_dir):
    cfg = load_config(None, ["learner.kl_coef=0.1", "learner.lr=1e-2"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    initial = {k: v.clone() for k, v in learner.ref.state_dict().items()}
    for _ in range(3):
        learner.train_step(batch())
    assert all(torch.equal(initial[k], v) for k, v in learner.ref.state_dict().items())


def test_dropout_is_off_so_the_policy_is_its_reference_before_any_step(model_dir, tmp_path):
    """A model saved with attention dropout (Llama's, read from an attribute) and a dropout
    module: the policy (train mode) and the reference (eval mode) gave different
    log-probs at step 0, twice over the same batch too."""
    import json
    import shutil

    path = tmp_path / "dropout"
    shutil.copytree(model_dir, path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    cfg = load_config(None, ["learner.reference=true"])
    learner = Learner(cfg.learner, cfg.model, str(path), seed=0)
    assert learner.model.model.layers[0].self_attn.attention_dropout == 0.0
    learner.model.model.embed_tokens = torch.nn.Sequential(
        learner.model.model.embed_tokens, torch.nn.Dropout(0.5)
    )
    from learner.learner import without_dropout

    without_dropout(learner.model)
    rows = collate([make_row(prompt_ids=[1, 2, 3, 4, 5, 6], response_ids=[7, 8])], learner.pad_id)
    with torch.no_grad():
        policy = [sequence_logprobs(learner.model, rows)[0] for _ in range(2)]
        ref = sequence_logprobs(learner.ref, rows)[0]
    assert learner.model.training
    assert torch.equal(policy[0], policy[1]) and torch.allclose(policy[0], ref)


def test_batch_diagnostics_include_diversity_per_game(model_dir):
    cfg = load_config(None, [])
    m = Learner(cfg.learner, cfg.model, model_dir, seed=0).train_step(batch())
    assert m["distinct_1"] == 1.0  # b, p, 5: three distinct one-character replies
    assert m["action_entropy/kuhn"] == pytest.approx(0.6931, abs=1e-4)  # b and p, once each
    assert m["action_entropy/tictactoe"] == 0.0
    assert m["baseline_kuhn_0"] == 0.0 and m["baseline_tictactoe_0"] == 0.0


def test_the_device_is_one_decision_auto_takes_the_cpu_without_a_gpu(monkeypatch):
    from selfplay.device import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="learner.device: 'cuda' asked for, but torch sees no GPU"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")


def test_the_learner_trains_on_the_device_it_picked(model_dir):
    cfg = load_config(None, ["learner.device=cpu"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    learner.train_step(batch())
    assert learner.device == torch.device("cpu")
    assert {p.device for p in learner.model.parameters()} == {learner.device}


def test_advantages_read_the_baseline_before_the_batch_updates_it(model_dir):
    wins = schema.from_rows(
        [make_row(traj_id=f"g{i}", game="kuhn", response_text="b", ret=1.0) for i in range(2)]
    )
    learner = Learner(load_config(None, []).learner, load_config(None, []).model, model_dir, seed=0)
    first = learner.train_step(wins)
    assert first["adv_mean"] == 1.0  # baseline 0 before any kuhn game: A = R
    assert learner.baselines[("kuhn", 0)] == 1.0  # then it starts at the batch's mean
    assert learner.train_step(wins)["adv_mean"] == 0.0


@pytest.mark.parametrize("placement, estimator", [("reward", "k1"), ("loss", "k2"), ("loss", "k3")])
def test_every_kl_placement_pulls_the_policy_back_towards_the_reference(model_dir, placement, estimator):
    """Train away from the reference with no KL, then with a strong KL only: the KL to the
    reference falls (in the reward as in the loss)."""
    away = load_config(None, ["learner.lr=5e-3", "learner.kl_coef=0.0"])
    learner = Learner(away.learner, away.model, model_dir, seed=0)
    learner.ref = copy.deepcopy(learner.model).eval().requires_grad_(False)
    for _ in range(5):
        learner.train_step(batch())
    pull = load_config(
        None,
        [
            "learner.lr=5e-3",
            "learner.kl_coef=5.0",
            "learner.entropy_coef=0.0",
            f"learner.kl_placement={placement}",
            f"learner.kl_estimator={estimator}",
        ],
    )
    learner.cfg = pull.learner
    neutral = schema.from_rows([make_row(traj_id=f"n{i}", ret=0.0) for i in range(4)])
    first = learner.train_step(neutral)["kl_ref"]
    for _ in range(6):
        last = learner.train_step(neutral)["kl_ref"]
    assert first > 0 and last < first


def test_reset_reference_anchors_the_kl_at_the_current_policy(model_dir):
    cfg = load_config(None, ["learner.lr=5e-3", "learner.kl_coef=0.1"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    for _ in range(3):
        moved = learner.train_step(batch())
    assert moved["kl_ref"] != 0.0  # the policy left its initial weights
    assert learner.reset_reference()
    for p, q in zip(learner.model.parameters(), learner.ref.parameters()):
        assert torch.equal(p, q)
    after = learner.train_step(batch())  # measured before this step's update: the policy is the anchor
    assert after["kl_ref"] == pytest.approx(0.0, abs=1e-6)
    plain = Learner(load_config(None, []).learner, cfg.model, model_dir, seed=0)
    assert not plain.reset_reference() and plain.ref is None  # kl_coef 0: no reference to move


def won_and_lost_games():
    """Two TicTacToe games of two X turns each: one won (+1), one lost (-1), told apart by
    their first prompt token, so a value of the state can learn each game's return."""
    rows = [
        make_row(traj_id=f"g{g}", turn=2 * t, prompt_ids=[1, 10 + g, 3 + t], ret=ret, outcome=ret)
        for g, ret in enumerate([1.0, -1.0])
        for t in range(2)
    ]
    return schema.from_rows(rows)


GAE = ["learner.advantage=gae", "buffer.whole_games=true", "learner.lr=3e-3"]


def test_the_value_head_learns_the_return_of_each_state(model_dir):
    cfg = load_config(None, GAE)
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    first = learner.train_step(won_and_lost_games())
    assert first["value_mean"] == 0.0  # zero-initialised head: A = G = the return at first
    assert first["adv_mean"] == 0.0 and first["adv_std"] > 0.9
    for _ in range(60):
        last = learner.train_step(won_and_lost_games())
    assert last["value_loss"] < 0.1 * first["value_loss"]
    assert last["explained_variance"] > 0.8


def the_same_boards_won_against_one_and_lost_against_another() -> pa.Table:
    """Two games of the same two boards: won against `random`, lost against `heuristic`."""
    rows = [
        make_row(
            traj_id=opponent,
            turn=2 * t,
            prompt_ids=[1, 10, 3 + t],
            ret=ret,
            outcome=ret,
            opponent_id=opponent,
        )
        for opponent, ret in (("random", 1.0), ("heuristic", -1.0))
        for t in range(2)
    ]
    return schema.from_rows(rows)


@pytest.mark.parametrize("sees", [False, True])
def test_a_value_head_that_sees_the_opponent_tells_apart_what_the_board_cannot(model_dir, sees):
    cfg = load_config(None, [*GAE, f"learner.value_sees_opponent={str(sees).lower()}"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    # a column per opponent kind: self, a league member, and the 7 scripted players of the
    # built-in games (fair, greedy, heuristic, minimax, nash, random, tactician)
    assert learner.value_head.out_features == (9 if sees else 1)
    for _ in range(60):
        last = learner.train_step(the_same_boards_won_against_one_and_lost_against_another())
    if sees:  # V(board, random) ~ 1, V(board, heuristic) ~ -1
        assert last["explained_variance"] > 0.8
    else:  # the same boards, opposite returns: the best a board-only value can do is 0
        assert last["explained_variance"] < 0.05


def test_a_one_turn_batch_reports_no_explained_variance_rather_than_nan(model_dir):
    cfg = load_config(None, GAE)
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    one = schema.from_rows([make_row(traj_id="g0", turn=0, prompt_ids=[1, 10, 3], ret=1.0, outcome=1.0)])
    metrics = learner.train_step(one)
    assert "explained_variance" not in metrics and math.isfinite(metrics["value_loss"])
    assert math.isfinite(learner.train_step(won_and_lost_games())["explained_variance"])


def trained_and_reloaded(overrides: list[str], model_dir: str, tmp_path, make_batch, steps: int = 3):
    """A learner trained `steps` steps on `make_batch()` and saved, and a second one
    built from that checkpoint and loaded, as a resume does."""
    cfg = load_config(None, overrides)
    a = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    for _ in range(steps):
        a.train_step(make_batch())
    a.save(tmp_path)
    b = Learner(cfg.learner, cfg.model, str(tmp_path / "model"), seed=0)
    b.load(tmp_path)
    return a, b


def test_gae_learner_saves_and_restores_its_value_head(model_dir, tmp_path):
    a, b = trained_and_reloaded(GAE, model_dir, tmp_path, won_and_lost_games)
    assert same_weights(a.value_head, b.value_head) and b.value_head.weight.abs().sum() > 0  # trained
    assert a.train_step(won_and_lost_games())["value_mean"] == pytest.approx(
        b.train_step(won_and_lost_games())["value_mean"], abs=1e-5
    )


def test_the_kl_reference_survives_a_save_and_load(model_dir, tmp_path):
    cfg = load_config(None, ["learner.kl_coef=0.1", "learner.lr=1e-2"])
    a = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    for _ in range(3):
        a.train_step(batch())
    assert not same_weights(a.model, a.ref)  # the reference is the initial policy, not this one
    a.save(tmp_path)
    b = Learner(cfg.learner, cfg.model, str(tmp_path / "model"), seed=0)
    assert same_weights(b.ref, a.model)  # built from the checkpoint: the saved policy...
    b.load(tmp_path)
    assert same_weights(b.ref, a.ref) and same_weights(b.model, a.model)  # ...until the reference loads
    assert a.train_step(batch())["kl_ref"] == pytest.approx(b.train_step(batch())["kl_ref"], rel=1e-4)


def test_a_checkpoint_without_its_kl_reference_is_refused_not_silently_reanchored(model_dir, tmp_path):
    plain = Learner(load_config(None, []).learner, load_config(None, []).model, model_dir, seed=0)
    plain.save(tmp_path)  # kl_coef 0: no reference saved
    cfg = load_config(None, ["learner.kl_coef=0.1"])
    b = Learner(cfg.learner, cfg.model, str(tmp_path / "model"), seed=0)
    with pytest.raises(FileNotFoundError, match="no reference.safetensors, the reference"):
        b.load(tmp_path)


@pytest.mark.parametrize(
    "bf16, native, on",
    [("auto", True, True), ("auto", False, False), ("true", False, True), ("false", True, False)],
)
def test_bf16_autocast_is_on_as_asked_or_where_the_device_has_bf16(model_dir, monkeypatch, bf16, native, on):
    """learner.bf16 auto autocasts only where bf16 is native (an AVX2-only CPU emulates it
    several times slower than fp32); true and false are obeyed."""
    monkeypatch.setattr("learner.peak.native_bf16", lambda device: native)
    cfg = load_config(None, [f"learner.bf16={bf16}", "learner.peak_tflops=1"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    assert learner.autocast is on
    ids = torch.tensor([[1, 5, 6]])
    with learner._compute({"input_ids": ids}):
        assert torch.is_autocast_enabled("cpu") is on
        logits = learner.model(input_ids=ids).logits
    assert logits.dtype == (torch.bfloat16 if on else torch.float32)


def test_math_attention_is_for_short_rows_on_the_cpu_only():
    assert math_attention("cpu", 24, 128) and math_attention("cpu", 128, 128)
    assert not math_attention("cpu", 129, 128)
    assert not math_attention("cpu", 24, 0)  # 0: flash always
    assert not math_attention("cuda", 24, 128)


@pytest.mark.parametrize(
    "max_len, checkpointing, flash", [(128, False, False), (0, False, True), (128, True, True)]
)
def test_a_training_step_runs_the_attention_kernel_its_length_picks(model_dir, max_len, checkpointing, flash):
    """What ran, read from the profiler: a 24-token batch trains through the math kernel
    under the default, through the flash kernel (forward and backward) with 0, and with
    gradient checkpointing, whose recompute in backward must meet the forward's kernel."""
    cfg = load_config(
        None,
        [
            f"learner.math_attention_max_len={max_len}",
            f"learner.gradient_checkpointing={checkpointing}",
            "learner.peak_tflops=1",
        ],
    )
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    with torch.profiler.profile() as prof:
        learner.train_step(turns(8, 23))
    names = {e.name for e in prof.events()}
    ran = {n for n in names if "flash_attention" in n}
    assert bool(ran) is flash, ran
    if flash:
        assert any("backward" in n for n in ran)


def test_the_math_and_flash_kernels_train_the_same_step(model_dir):
    """The kernel is a speed choice, not a different model: one step from the same weights
    on the same batch lands on the same loss and weights under both, within float error."""
    out = {}
    for max_len in (128, 0):
        cfg = load_config(
            None, [f"learner.math_attention_max_len={max_len}", "learner.peak_tflops=1", "learner.bf16=false"]
        )
        learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
        metrics = learner.train_step(turns(8, 23))
        out[max_len] = (
            metrics["loss"],
            torch.cat([p.detach().flatten() for p in learner.model.parameters()]),
        )
    assert out[128][0] == pytest.approx(out[0][0], rel=1e-4, abs=1e-6)
    torch.testing.assert_close(out[128][1], out[0][1], rtol=1e-4, atol=1e-5)


def test_a_compiled_learner_takes_the_eager_steps_and_compiles_once(tmp_path, monkeypatch):
    """learner.compile is a speed choice, not a different model: from the same weights, GAE
    steps on batches of two sizes and lengths land on the eager learner's losses and
    weights (float32); the second batch's shapes compile nothing new (dynamic shapes); the
    checkpoint's keys are the plain model's. (A one-layer model: compiling the 1m preset's
    four takes ~80 s here with torch's compile cache empty.)"""
    monkeypatch.setitem(PRESETS, "1layer", (64, 128, 1, 2))
    model_dir = str(create_default_model(tmp_path, preset="1layer", max_positions=64))
    longer = schema.from_rows(
        [
            make_row(traj_id=f"g{g}", turn=2 * t, prompt_ids=[1, 10 + g, 3 + t, 7, 8], ret=ret, outcome=ret)
            for g, ret in enumerate([1.0, -1.0, 1.0])
            for t in range(2)
        ]
    )
    graphs = torch._dynamo.utils.counters["stats"]
    out = {}
    for flag in ("false", "true"):
        cfg = load_config(None, GAE + [f"learner.compile={flag}", "learner.bf16=false"])
        learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
        compiled = []
        steps = []
        for table in (won_and_lost_games(), longer):
            before = graphs["unique_graphs"]
            steps.append(learner.train_step(table)["loss"])
            compiled.append(graphs["unique_graphs"] - before)
        weights = torch.cat([p.detach().flatten() for p in learner.model.parameters()])
        out[flag] = steps, weights, list(learner.model.state_dict()), compiled
    (eager_loss, eager_w, eager_keys, none), (loss, weights, keys, compiled) = out["false"], out["true"]
    assert none == [0, 0] and compiled[0] > 0 and compiled[1] == 0
    assert loss == pytest.approx(eager_loss, rel=1e-4, abs=1e-6)
    torch.testing.assert_close(weights, eager_w, rtol=1e-4, atol=1e-5)
    assert keys == eager_keys


def test_a_model_dtype_of_auto_is_resolved_for_the_exports(model_dir, monkeypatch):
    """A ModelConfig built without the loader (auto) still exports one concrete dtype."""
    cfg = load_config()
    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr("selfplay.device.native_bf16", lambda device="cpu", v=native: v)
        learner = Learner(cfg.learner, ModelConfig(dtype="auto"), model_dir, seed=0)
        tensors, _ = learner.export_tensors()
        assert learner.engine_dtype == dtype and {t.dtype for t in tensors.values()} == {dtype}


def test_every_step_reports_its_tokens_and_mfu(model_dir):
    cfg = load_config(None, ["learner.peak_tflops=1e-6"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    # 1m preset, hidden 128, MLP 352, 4 layers, vocab 128 (102 tokens, padded): per layer
    # attention 4 * 128^2 + MLP 3 * 128 * 352 + 2 norms * 128 = 200,960; x4 + final norm 128
    # + head 128 * 128 = 820,352 parameters besides the embedding; 6 FLOPs each per token
    assert learner.flops_per_token == 6 * 820_352
    m = learner.train_step(batch())
    assert m["tokens"] == 3 * 4  # three rows of 3 prompt + 1 response tokens
    assert m["mfu"] == pytest.approx(6 * 820_352 * 12 / m["step_s"] / 1e6)


def test_results_against_training_opponents_count_each_game_once():
    rows = [
        *[make_row(traj_id="a", opponent_id="heuristic", outcome=1.0, turn=t) for t in (0, 2, 4)],
        make_row(traj_id="b", opponent_id="heuristic", outcome=0.0),
        make_row(traj_id="c", opponent_id="heuristic", outcome=-1.0),
        make_row(traj_id="d", opponent_id="self", outcome=-1.0),
    ]
    assert opponent_results(rows) == {
        "train/tictactoe/heuristic/win": 1 / 3,
        "train/tictactoe/heuristic/non_loss": 2 / 3,
        "train/tictactoe/heuristic/games": 3,
    }


# ---- task rows: NLL on sft rows, the builder's advantages on rl rows


def task_batch(label: str, advantage: float | None = None, n: int = 4):
    return schema.from_rows(
        [
            make_task_row(
                f"g{i}",
                1.0,
                "57",
                prompt_ids=[1, 20, 21, 22],
                response_ids=[40, 46, 2],
                behaviour_logprobs=[-1.0, -1.0, -1.0],
                label=label,
                advantage=advantage,
            )
            for i in range(n)
        ]
    )


def test_sft_rows_train_the_negative_log_likelihood_of_their_reply(model_dir):
    cfg = load_config(None, ["task.name=arithmetic", "learner.advantage=group", "learner.lr=1e-2"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    first = learner.train_step(task_batch("sft"))
    assert first["pg_loss"] == 0.0 and first["sft_rows"] == 4 and first["kl_behaviour"] == 0.0
    assert first["loss"] == pytest.approx(first["nll"])  # no policy gradient, KL or entropy term
    for _ in range(10):
        last = learner.train_step(task_batch("sft"))
    assert last["nll"] < first["nll"] / 2  # it learns the reply


def test_a_grad_clip_of_zero_clips_nothing(model_dir):
    """0 turns a term off, as for the other learner settings: the step is unclipped (a limit
    of 0 zeroed the gradient and the weights never moved)."""
    steps = {}
    for clip in (0.0, 1e9):
        cfg = load_config(
            None, ["task.name=arithmetic", "learner.advantage=group", f"learner.grad_clip={clip}"]
        )
        learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
        before = {k: v.clone() for k, v in learner.model.state_dict().items()}
        m = learner.train_step(task_batch("sft"))
        assert m["grad_norm"] > 0
        steps[clip] = {k: v - before[k] for k, v in learner.model.state_dict().items()}
    assert any(d.abs().max() > 0 for d in steps[0.0].values())
    assert all(torch.equal(steps[0.0][k], steps[1e9][k]) for k in steps[0.0])  # as if no limit


def test_rl_rows_train_on_the_builders_advantage_and_no_nll(model_dir):
    cfg = load_config(None, ["task.name=arithmetic", "learner.advantage=group"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    m = learner.train_step(task_batch("rl", advantage=1.0))
    assert m["nll"] == 0.0 and m["sft_rows"] == 0 and m["adv_mean"] == 1.0 and m["batch_reward"] == 1.0
    zero = Learner(cfg.learner, cfg.model, model_dir, seed=0).train_step(task_batch("rl", advantage=0.0))
    assert zero["pg_loss"] == 0.0 and zero["grad_norm"] == 0.0  # a group that agreed teaches nothing


def test_a_stage_sets_the_learning_rate_of_every_group_and_keeps_the_moments(model_dir):
    cfg = load_config(None, ["task.name=arithmetic", "learner.advantage=group", "learner.lr=1e-2"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    learner.train_step(task_batch("sft"))
    moments = {k: v["exp_avg"].clone() for k, v in learner.opt.state_dict()["state"].items()}
    learner.set_lr(1e-4)
    assert {g["lr"] for g in learner.opt.param_groups} == {1e-4}
    after = learner.opt.state_dict()["state"]
    assert all(torch.equal(after[k]["exp_avg"], m) for k, m in moments.items())


def test_rl_rows_without_a_builder_advantage_are_refused(model_dir):
    cfg = load_config(None, ["task.name=arithmetic", "learner.advantage=group"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    with pytest.raises(ValueError, match="4 rows have no builder advantage"):
        learner.train_step(task_batch("rl", advantage=None))


def anchored(model_dir: str, coef: float = 0.5) -> Learner:
    """A task learner whose rows labelled anchor train coef x KL to its reference (fp32)."""
    cfg = load_config(
        None,
        ["task.name=arithmetic", "learner.advantage=group", "learner.bf16=false", "learner.grad_clip=1e9"],
    )
    return Learner(dataclasses.replace(cfg.learner, anchor_coef=coef), cfg.model, model_dir, seed=0)


def gradient(learner: Learner) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in learner.model.parameters() if p.grad is not None])


def test_anchor_rows_train_the_kl_to_the_reference_alone(model_dir):
    """Rows labelled anchor (builder.anchored_roles) carry no advantage: at the reference they
    teach nothing; moved off it, their gradient is anchor_coef x the gradient of k2 (the
    importance-weighted KL(pi || ref)) over their tokens, worked here from the two models'
    log-probs; steps on them pull the policy back; they are not sampled replies' rewards."""
    learner = anchored(model_dir)
    at_ref = learner.train_step(task_batch("anchor"))
    assert at_ref["grad_norm"] == 0.0 and at_ref["kl_anchor"] == 0.0 and at_ref["anchor_rows"] == 4
    assert at_ref["pg_loss"] == 0.0 and at_ref["nll"] == 0.0 and "batch_reward" not in at_ref
    assert at_ref["sft_rows"] == 0
    learner.set_lr(1e-2)
    for _ in range(5):  # away from the reference
        learner.train_step(task_batch("sft"))
    learner.set_lr(0.0)
    m = learner.train_step(task_batch("anchor"))
    rows = task_batch("anchor").to_pylist()
    batch = collate(rows, learner.pad_id)
    logp, _ = sequence_logprobs(learner.model, batch, learner.temperature)
    with torch.no_grad():
        ref_logp, _ = sequence_logprobs(learner.ref, batch, learner.temperature)
    mask = batch["mask"]
    weight = torch.exp(logp.detach() - batch["behaviour_logp"])
    k2 = 0.5 * (ref_logp - logp) ** 2
    by_hand = 0.5 * (weight * k2 * mask).sum() / mask.sum()
    params = [p for p in learner.model.parameters() if p.grad is not None]
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(by_hand, params)])
    assert expected.abs().max() > 1e-5
    # fp32 sums in another order: a few eps of the largest terms (as the micro-batch test)
    torch.testing.assert_close(
        gradient(learner), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())
    )
    log_r = (ref_logp - logp).detach()
    assert m["kl_anchor"] == pytest.approx(
        float(((log_r.exp() - 1 - log_r) * mask).sum() / mask.sum()), rel=1e-5
    )
    learner.set_lr(5e-3)
    first = m["kl_anchor"]
    for _ in range(6):
        last = learner.train_step(task_batch("anchor"))["kl_anchor"]
    assert 0 < last < 0.8 * first


def test_anchor_rows_without_an_anchor_coefficient_are_refused(model_dir):
    cfg = load_config(None, ["task.name=arithmetic", "learner.advantage=group", "learner.kl_coef=0.1"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)  # a reference, but no anchor term
    with pytest.raises(ValueError, match="4 rows labelled anchor .* learner.anchor_coef is 0"):
        learner.train_step(task_batch("anchor"))


def test_anchor_rows_add_their_kl_to_the_policy_gradient_of_the_others_undiluted(model_dir):
    """A batch of rl and anchor rows: the policy gradient is the rl rows' alone (their own
    token mean, not diluted by the anchor's tokens), the anchor's KL adds to it, and the
    advantage and reward figures read the rl rows. The rl rows' prompts are longer, so the
    reference, run on the anchor rows alone, sees a shorter batch than the policy; in
    micro-batches of 2 some hold no anchor row (the reference is not run on them)."""
    grads, metrics, reference_runs = {}, {}, {}
    rl = schema.from_rows(
        [
            make_task_row(
                f"r{i}",
                1.0,
                "57",
                prompt_ids=[1, 20, 21, 22, 23, 24, 25],
                response_ids=[40, 46, 2],
                behaviour_logprobs=[-1.0, -1.0, -1.0],
                label="rl",
                advantage=1.0,
            )
            for i in range(3)
        ]
    )
    cases = {"rl": ([rl], 0), "anchor": ([task_batch("anchor")], 0)}
    cases |= {f"both{m}": ([rl, task_batch("anchor")], m) for m in (0, 2)}
    for name, (rows, micro) in cases.items():
        learner = anchored(model_dir)
        learner.cfg = dataclasses.replace(learner.cfg, micro_batch_size=micro)
        learner.ref.get_input_embeddings().weight.data.add_(0.05)  # a reference apart from the policy
        learner.set_lr(0.0)
        runs = reference_runs[name] = []
        learner.ref.register_forward_hook(lambda *_, runs=runs: runs.append(1))
        metrics[name] = learner.train_step(pa.concat_tables(rows))
        grads[name] = gradient(learner)
    # 3 rl rows then 4 anchor rows: in micro-batches of 2, three of four hold an anchor row
    assert {k: len(v) for k, v in reference_runs.items()} == {"rl": 0, "anchor": 1, "both0": 1, "both2": 3}
    assert grads["anchor"].abs().max() > 1e-5 and grads["rl"].abs().max() > 1e-5
    for both in ("both0", "both2"):
        assert metrics[both]["pg_loss"] == pytest.approx(metrics["rl"]["pg_loss"], rel=1e-5)
        assert metrics[both]["kl_anchor"] == pytest.approx(metrics["anchor"]["kl_anchor"], rel=1e-5)
        assert metrics[both]["adv_mean"] == 1.0 and metrics[both]["batch_reward"] == 1.0
        atol = 1e-5 * float(grads[both].abs().max())  # fp32 sums in another order
        torch.testing.assert_close(grads[both], grads["rl"] + grads["anchor"], rtol=1e-4, atol=atol)


# ---- micro-batches: gradients accumulate to the one-pass update


def mixed_batch():
    """Seven turns of two games and one supervised row, of different prompt and reply
    lengths (so micro-batches pad differently), each with a builder advantage."""
    rows = []
    for i in range(7):
        n = 1 + i % 3
        rows.append(
            make_row(
                traj_id=f"g{i % 2}",
                turn=i,
                role=i % 2,
                prompt_ids=[1] + [10 + j for j in range(2 + i)],
                response_ids=[20 + i + j for j in range(n)],
                behaviour_logprobs=[-1.0 - 0.25 * j for j in range(n)],
                ret=(-1.0) ** i * (0.5 + 0.25 * i),
                advantage=0.5 * (i - 3),
                label="sft" if i == 3 else None,
                policy_version=i % 2,
            )
        )
    return schema.from_rows(rows)


ACCUMULATION_CASES = {
    # a value head: the plan reads every row's V(s) in a pre-pass; KL in the loss
    "gae": GAE + ["learner.kl_coef=0.1", "learner.kl_placement=loss", "learner.kl_estimator=k3"],
    # the KL penalty in the reward, then normalised over the batch; GRPO's per-reply mean
    # (and NLL's per target)
    "rae_kl_reward": [
        "learner.kl_coef=0.1",
        "learner.normalize_advantages=true",
        "learner.loss_aggregation=sequence_mean",
        "learner.nll_aggregation=sequence_mean",
    ],
    # the builder's advantages and an entropy bonus: no pre-pass
    "group": ["task.name=arithmetic", "learner.advantage=group", "learner.entropy_coef=0.01"],
}


@pytest.mark.parametrize("case", sorted(ACCUMULATION_CASES))
def test_micro_batches_accumulate_the_gradient_of_the_whole_batch(model_dir, case):
    """lr 0 keeps both learners at the same weights, so the second step compares too (with
    the RAE baselines the first one moved); fp32 so the sums differ only in their order."""
    common = ACCUMULATION_CASES[case] + ["learner.bf16=false", "learner.grad_clip=1e9"]
    learners = {}
    for micro in (0, 2, 3):
        cfg = load_config(None, common + [f"learner.micro_batch_size={micro}"])
        learners[micro] = Learner(cfg.learner, cfg.model, model_dir, seed=0)
        learners[micro].set_lr(0.0)
    for _ in range(2):
        metrics = {micro: learner.train_step(mixed_batch()) for micro, learner in learners.items()}
        assert [metrics[m]["micro_batches"] for m in (0, 2, 3)] == [1, 4, 3]
        one = metrics[0]
        assert one["grad_norm"] > 0 and one["clip_frac"] > 0
        assert ("kl_ref" in one) == (case != "group")  # reported where there is a KL term
        for micro in (2, 3):
            for key in (
                "loss",
                "pg_loss",
                "nll",
                "kl_ref",
                "entropy",
                "clip_frac",
                "grad_norm",
                "adv_mean",
                "adv_std",
                "tokens",
            ):
                if key == "kl_ref" and case == "group":
                    continue
                assert metrics[micro][key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), (micro, key)
            whole = dict(learners[0].model.named_parameters())
            for name, p in learners[micro].model.named_parameters():
                # fp32 sums in another order: an element that cancels to near 0 keeps an error of
                # a few eps times the tensor's largest terms (5.4e-7 where they reach 2.4, seen on
                # an AVX-512 CPU), far below what a mis-weighted micro-batch makes
                atol = 1e-6 * float(whole[name].grad.abs().max()) + 1e-7
                assert torch.allclose(p.grad, whole[name].grad, rtol=1e-4, atol=atol), (micro, name)
    if case == "gae":
        assert one["value_loss"] > 0 and metrics[2]["value_loss"] == pytest.approx(
            one["value_loss"], rel=1e-5
        )


def test_gradient_checkpointing_gives_the_same_gradient(model_dir):
    """On the same attention kernel (checkpointing keeps the flash kernel: 0 asks it of both)."""
    grads = []
    for flag in ("false", "true"):
        cfg = load_config(
            None,
            [
                "learner.bf16=false",
                f"learner.gradient_checkpointing={flag}",
                "learner.math_attention_max_len=0",
            ],
        )
        learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
        learner.set_lr(0.0)
        learner.train_step(mixed_batch())
        grads.append(torch.cat([p.grad.flatten() for p in learner.model.parameters()]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("case", ["rae_kl_reward", "gae"])
def test_a_saved_and_loaded_learner_takes_the_same_next_step(model_dir, tmp_path, case):
    """Everything a step reads survives a save and load: weights, AdamW moments and step
    counts, RAE baselines, the value head, the KL reference, counters. The next step of
    the loaded learner is the original's, exactly."""
    a, b = trained_and_reloaded(
        ACCUMULATION_CASES[case] + ["learner.lr=1e-2"], model_dir, tmp_path, mixed_batch
    )
    assert (b.step, b.version, b.baselines) == (a.step, a.version, a.baselines)
    ma, mb = a.train_step(mixed_batch()), b.train_step(mixed_batch())
    assert same_weights(a.model, b.model) and ma["loss"] == mb["loss"]
    for sa, sb in zip(a.opt.state_dict()["state"].values(), b.opt.state_dict()["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    if a.value_head is not None:
        assert same_weights(a.value_head, b.value_head)
    assert same_weights(a.ref, b.ref)


# ---- optimiser-state offload (learner.optimizer_offload)

OFFLOAD = ACCUMULATION_CASES["gae"] + ["learner.lr=1e-2", "learner.grad_clip=0.5"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_an_offloaded_optimiser_takes_the_steps_the_device_one_takes(model_dir, lora):
    """AdamW's moments and fp32 copies of the trained weights on the host, the step taken
    there and the weights copied back: the same losses, clipped gradient norms and weights
    as the optimiser on the model's own parameters, step for step (exactly: the same fp32
    arithmetic on the same numbers)."""
    settings = OFFLOAD + (["learner.lora_rank=4"] if lora else [])
    plain, offloaded = (
        Learner(cfg.learner, cfg.model, model_dir, seed=0)
        for cfg in (
            load_config(None, settings + [f"learner.optimizer_offload={f}"]) for f in ("false", "true")
        )
    )
    for _ in range(3):
        want, got = plain.train_step(mixed_batch()), offloaded.train_step(mixed_batch())
        assert (got["loss"], got["grad_norm"]) == (want["loss"], want["grad_norm"])
    # the clip acted, on the model's gradients (the host copies have none then)
    assert want["grad_norm"] > 0.5
    assert same_weights(plain.model, offloaded.model) and same_weights(plain.value_head, offloaded.value_head)
    host, state = offloaded.opt.host, offloaded.opt.optimizer.state
    assert len(host) == len(offloaded.params) == len(plain.params)  # LoRA: the adapters and the head alone
    assert all(h in state for h in host) and not any(p in state for p in offloaded.params)
    assert all(h.data_ptr() != p.data_ptr() for h, p in zip(host, offloaded.params, strict=True))
    assert {s["exp_avg"].device.type for s in state.values()} == {"cpu"}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_checkpoint_resumes_with_or_without_offload(model_dir, tmp_path, lora):
    """An offloaded learner's checkpoint holds the optimiser's state in the usual layout:
    a learner resumed from it with offload, or without, takes the saved one's next step;
    the resumed host copies are of the loaded weights (value head, LoRA adapters), not of
    the ones the learner was built with."""
    settings = OFFLOAD + (["learner.lora_rank=4"] if lora else [])
    a, offloaded = trained_and_reloaded(
        settings + ["learner.optimizer_offload=true"], model_dir, tmp_path, mixed_batch
    )
    cfg = load_config(None, settings)
    plain = Learner(cfg.learner, cfg.model, str(tmp_path / "model"), seed=0)
    plain.load(tmp_path)
    want = a.train_step(mixed_batch())
    for b in (offloaded, plain):
        got = b.train_step(mixed_batch())
        assert (got["loss"], got["grad_norm"]) == (want["loss"], want["grad_norm"])
        assert same_weights(a.model, b.model) and same_weights(a.value_head, b.value_head)


# ---- preference pairs (rows labelled dpo)

PAIRS = ["task.name=arithmetic", "learner.advantage=group", "learner.reference=true"]


def pair_batch(n: int = 5):
    """n preference pairs of different prompt and reply lengths: the chosen reply in
    `response_ids`, the rejected one in `rejected_ids`."""
    return schema.from_rows(
        [
            make_task_row(
                f"p{i}",
                0.0,
                traj_id=f"pair-{i}",
                prompt_ids=[1] + [10 + j for j in range(1 + i)],
                response_ids=[30 + j for j in range(2 + i % 3)],
                rejected_ids=[50 + i + j for j in range(1 + i % 2)],
                rejected_text="no",
                label="dpo",
            )
            for i in range(n)
        ]
    )


def test_dpo_steps_raise_the_chosen_over_the_rejected_against_the_reference(model_dir):
    cfg = load_config(None, PAIRS + ["learner.lr=3e-3", "learner.beta=0.5", "learner.chosen_nll_coef=0.5"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    first = learner.train_step(pair_batch())
    # the policy starts as its reference: every implicit reward is 0 and the pair loss log 2;
    # the step's loss adds the NLL term on the chosen replies
    assert first["preference_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert first["loss"] == pytest.approx(first["preference_loss"] + 0.5 * first["chosen_nll"], rel=1e-6)
    assert first["chosen_nll"] > 1.0
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-3) and first["pairs"] == 5
    for _ in range(10):
        last = learner.train_step(pair_batch())
    assert last["preference_loss"] < 0.5 and last["reward_accuracy"] == 1.0
    assert last["chosen_logratio"] > 0 > last["rejected_logratio"]
    assert same_weights(
        learner.ref, Learner(cfg.learner, cfg.model, model_dir, seed=0).model
    )  # never refreshed


def test_dpo_rows_without_a_reference_or_a_rejected_reply_are_refused(model_dir):
    cfg = load_config(None, ["task.name=arithmetic", "learner.advantage=group"])
    with pytest.raises(ValueError, match="learner.reference"):
        Learner(cfg.learner, cfg.model, model_dir, seed=0).train_step(pair_batch())
    cfg = load_config(None, PAIRS)
    bad = pair_batch().set_column(
        schema.COLUMNS.index("rejected_ids"), "rejected_ids", pa.array([None] * 5, pa.list_(pa.int32()))
    )
    with pytest.raises(ValueError, match="5 dpo rows have no rejected reply"):
        Learner(cfg.learner, cfg.model, model_dir, seed=0).train_step(bad)


@pytest.mark.parametrize("kind", ["sigmoid", "ipo", "hinge"])
def test_preference_micro_batches_accumulate_the_gradient_of_the_whole_batch(model_dir, kind):
    """Pairs mixed with sft rows, an NLL term on the chosen replies: micro-batches of 2 and 3
    give the one-pass gradient (lr 0, fp32; the policy is moved off its reference first so
    the sigmoid's and hinge's gradients are not all alike)."""
    common = PAIRS + [
        f"learner.preference_loss={kind}",
        "learner.chosen_nll_coef=0.5",
        "learner.bf16=false",
        "learner.grad_clip=1e9",
    ]
    table = pa.concat_tables([pair_batch(), mixed_batch()])
    learners = {}
    for micro in (0, 2, 3):
        cfg = load_config(None, common + [f"learner.micro_batch_size={micro}"])
        learners[micro] = Learner(cfg.learner, cfg.model, model_dir, seed=0)
        with torch.no_grad():
            for p in learners[micro].model.parameters():
                p.add_(0.01 * torch.sin(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
        learners[micro].set_lr(0.0)
    metrics = {micro: learner.train_step(table) for micro, learner in learners.items()}
    one = metrics[0]
    assert one["pairs"] == 5 and one["sft_rows"] == 1 and one["grad_norm"] > 0
    for micro in (2, 3):
        for key in ("loss", "preference_loss", "chosen_nll", "reward_margin", "nll", "pg_loss", "tokens"):
            assert metrics[micro][key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), (micro, key)
        whole = dict(learners[0].model.named_parameters())
        for name, p in learners[micro].model.named_parameters():
            # fp32 sums in another order: ~1e-6 apart on gradients up to ~3 (torch 2.13, ipo)
            assert torch.allclose(p.grad, whole[name].grad, rtol=1e-4, atol=2e-6), (micro, name)


# ---- the weights' moving average (learner.ema_decay)

EMA_SETTINGS = ["learner.ema_decay=0.5", "learner.lr=1e-2", "learner.bf16=false"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_average_is_the_warmed_up_ema_of_the_weights_after_every_step(model_dir, lora):
    """After step t the average is d_t * average + (1 - d_t) * weights, d_t = min(0.5,
    (1 + t) / (10 + t)): 2/11, 3/12, 4/13 over three steps, computed here from the weights
    recorded after each step. With LoRA the adapters are averaged and the frozen weights
    stay as they are; the averaged policy is exported merged, as the trained one."""
    cfg = load_config(None, EMA_SETTINGS + (["learner.lora_rank=4"] if lora else []))
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    trained = {n: p for n, p in learner.model.named_parameters() if p.requires_grad}
    want = {n: p.detach().clone() for n, p in trained.items()}
    for t, d in zip((1, 2, 3), (2 / 11, 3 / 12, 4 / 13)):
        learner.train_step(mixed_batch())
        want = {n: d * want[n] + (1 - d) * trained[n].detach() for n in want}
        got = dict(learner.ema.named_parameters())
        for n, w in want.items():
            assert torch.allclose(got[n], w, rtol=1e-5, atol=1e-7), (t, n)
    moved = max((want[n] - p).abs().max().item() for n, p in trained.items())
    assert moved > 1e-3  # the average lags the weights it averages
    frozen = {n: p for n, p in learner.model.named_parameters() if not p.requires_grad}
    assert bool(frozen) == lora and all(
        torch.equal(p, dict(learner.ema.named_parameters())[n]) for n, p in frozen.items()
    )
    averaged, current = learner.policy_state(averaged=True), learner.policy_state()
    assert sorted(averaged) == sorted(current) and not any("lora" in k for k in averaged)  # merged names
    assert max((averaged[k] - current[k]).abs().max().item() for k in current) > 1e-3
    assert learner.export(averaged=True)[1] != learner.export()[1]


def test_without_ema_decay_no_average_is_kept_or_exported(model_dir):
    cfg = load_config(None, [])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    assert learner.ema is None
    with pytest.raises(ValueError, match="learner.ema_decay is 0"):
        learner.export(averaged=True)


def test_the_average_survives_a_save_and_load_and_is_saved_as_a_model(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    a, b = trained_and_reloaded(EMA_SETTINGS, model_dir, tmp_path, mixed_batch)
    assert not same_weights(a.ema, a.model) and same_weights(a.ema, b.ema)
    assert (tmp_path / "ema.safetensors").exists()
    # averaged/: an HF model dir holding the averaged weights (what `selfplay eval` would play)
    served = AutoModelForCausalLM.from_pretrained(tmp_path / "averaged", dtype=torch.float32).state_dict()
    assert all(torch.equal(served[k], v) for k, v in a.policy_state(averaged=True).items())
    a.train_step(mixed_batch())
    b.train_step(mixed_batch())
    assert same_weights(a.ema, b.ema)  # the next update, from the restored average and step


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_checkpoint_without_an_average_restarts_it_from_the_resumed_weights(model_dir, tmp_path, lora):
    """With LoRA the resumed learner is built from the merged model/ and its frozen weights
    come back from lora.safetensors: the average restarts from those, not from the merged
    weights it was copied from (else it would add the adapters twice)."""
    extra = ["learner.lora_rank=4"] if lora else []
    cfg = load_config(None, ["learner.lr=1e-2", *extra])
    plain = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    plain.train_step(mixed_batch())
    plain.save(tmp_path)  # ema_decay 0: no average saved
    cfg = load_config(None, EMA_SETTINGS + extra)
    b = Learner(cfg.learner, cfg.model, str(tmp_path / "model"), seed=0)
    b.load(tmp_path)
    assert same_weights(b.ema, plain.model)
    averaged, trained = b.policy_state(averaged=True), plain.policy_state()
    assert all(torch.equal(averaged[k], v) for k, v in trained.items())


def test_log_probs_at_a_temperature_are_taken_in_float32_as_the_engine_takes_them():
    """bf16 logits (autocast) divided by T in bf16 round twice; vLLM divides in float32."""
    from learner.learner import policy_logprobs
    from learner.losses import token_logprobs

    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 9, 512, generator=g) * 6).to(torch.bfloat16)
    ids = torch.randint(0, 512, (2, 9), generator=g)
    got, _ = policy_logprobs(logits, {"input_ids": ids}, temperature=0.7)
    want, _ = token_logprobs(logits[:, :-1].float() / 0.7, ids[:, 1:])
    assert got.dtype == torch.float32 and (got - want).abs().max().item() < 1e-5


def test_the_value_head_computes_in_float32_under_bf16_autocast(model_dir):
    """Under bf16 autocast the head's Linear cast its float32 input back to bf16: V(s) came
    out in bf16 (0.0078 apart near 1; two states' 1.2368 and 1.2329 both read 1.2344), and
    GAE's advantages with it."""
    from learner.learner import logprobs_and_values

    cfg = load_config(None, GAE + ["learner.bf16=true"])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    assert learner.autocast and learner.value_head is not None
    batch = collate(won_and_lost_games().to_pylist(), learner.pad_id)
    with torch.no_grad(), learner._compute(batch):
        _, _, values = logprobs_and_values(learner.model, learner.value_head, batch)
    assert values.dtype == torch.float32


def test_a_single_learners_optimiser_state_is_told_from_a_groups(model_dir, tmp_path):
    """A group resuming a single learner's checkpoint failed inside torch (KeyError
    'state.0.step'): its optimiser's state is by position, a group's by name."""
    from learner.learner import by_position

    cfg = load_config(None, [])
    learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
    learner.train_step(batch())
    learner.save(str(tmp_path))
    state = torch.load(tmp_path / "optimizer.pt", weights_only=True)
    assert by_position(state)
    named = {
        "state": {f"model.{k}": v for k, v in state["state"].items()},
        "param_groups": [{"params": ["model.a"]}],
    }
    assert not by_position(named)


def test_the_learner_takes_its_threads_after_an_engine_made_torchs_setter_a_no_op(model_dir, monkeypatch):
    """vLLM's CPU worker, started in this process (the sync loop, make bench), replaces
    torch.set_num_threads for the whole process with one that only warns."""
    cfg = load_config(None, ["model.preset=1m", "model.max_model_len=64"])
    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # as vllm/v1/worker/cpu_worker.py does
    want = 1 if before != 1 else 2
    try:
        Learner(dataclasses.replace(cfg.learner, threads=want), cfg.model, model_dir, seed=0)
        assert torch.get_num_threads() == want
    finally:
        torch._C.set_num_threads(before)


def test_the_chosen_nll_term_enters_the_gradient_by_its_coefficient(model_dir):
    """learner.chosen_nll_coef: the logged loss adds it (tested above), and so does the
    gradient, linearly in the coefficient (a total without it trained as if it were 0)."""
    grads = {}
    for coef in (0.0, 0.5, 1.0):
        cfg = load_config(
            None,
            PAIRS
            + [
                "learner.beta=0.5",
                f"learner.chosen_nll_coef={coef}",
                "learner.grad_clip=1e9",
                "learner.bf16=false",
            ],
        )
        learner = Learner(cfg.learner, cfg.model, model_dir, seed=0)
        learner.set_lr(0.0)
        learner.train_step(pair_batch())
        grads[coef] = gradient(learner)
    step = grads[0.5] - grads[0.0]
    assert step.abs().max() > 1e-4
    torch.testing.assert_close(grads[1.0] - grads[0.5], step, rtol=1e-3, atol=1e-6)
