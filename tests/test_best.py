"""The best checkpoint by a held-out evaluation: the rule, the keeper's files (an HF model
directory that transformers loads), its restore on resume, and the acceptance figures."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from selfplay.best import BestCheckpoint, best_acceptance, best_rule, improves
from selfplay.model import create_default_model
from selfplay.weights import export_weights

TARGETS = {"tictactoe/minimax/non_loss": ">= 0.90", "tictactoe/random/illegal": "<= 0.01"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return create_default_model(tmp_path_factory.mktemp("m"), preset="1m", max_positions=64)


def test_the_rule_is_the_first_acceptance_target_and_its_direction():
    assert best_rule(TARGETS) == ("tictactoe/minimax", "non_loss", True)
    assert best_rule({"kuhn/exploitability/exploitability": "<= 0.05"}) == (
        "kuhn/exploitability",
        "exploitability",
        False,
    )
    assert best_rule({}) is None


def test_improves_is_strict_so_ties_keep_the_earlier_weights():
    assert improves(0.5, None, True) and improves(0.6, 0.5, True) and not improves(0.5, 0.5, True)
    assert improves(0.04, 0.05, False) and not improves(0.06, 0.05, False)


def shared(model, step):
    blob, checksum = export_weights(model, torch.bfloat16)
    return {"ref": [blob], "version": step, "step": step, "checksum": checksum}


def test_the_keeper_writes_the_best_weights_as_a_model_directory_and_restores_them(model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    keeper = BestCheckpoint(TARGETS, tmp_path, str(model_dir))
    fetch = lambda w: w["ref"][0]  # noqa: E731  (the driver's is ray.get)
    assert keeper.offer("tictactoe/minimax", {"non_loss": 0.4}, shared(model, 10), fetch)
    assert not keeper.offer("tictactoe/random", {"non_loss": 0.9}, shared(model, 20), fetch)  # not the rule's
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # other weights, better evaluated
    assert keeper.offer("tictactoe/minimax", {"non_loss": 0.7}, shared(model, 30), fetch)
    assert not keeper.offer("tictactoe/minimax", {"non_loss": 0.7}, shared(model, 40), fetch)
    info = json.loads((tmp_path / "best" / "best.json").read_text())
    want = {
        "metric": "tictactoe/minimax/non_loss",
        "value": 0.7,
        "step": 30,
        "version": 30,
        "averaged": False,
    }
    assert info == want
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "best")
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight.to(torch.bfloat16).float())
    assert not (tmp_path / "best.tmp").exists()

    resumed = BestCheckpoint(TARGETS, tmp_path, str(model_dir), put=lambda blob: blob)
    assert (resumed.value, resumed.weights["step"]) == (0.7, 30)
    assert resumed.weights["checksum"] == keeper.weights["checksum"]  # what an engine must echo
    assert resumed.weights["averaged"] is False  # as best.json says
    assert not resumed.offer("tictactoe/minimax", {"non_loss": 0.6}, shared(model, 50), fetch)


def checkpoint_dir(root, step: int):
    d = root / "checkpoints" / f"step_{step:07d}"
    d.mkdir(parents=True)
    (d / "driver_state.json").write_text(json.dumps({"step": step}))
    return d


def test_a_resume_restores_the_best_as_its_checkpoint_had_it(model_dir, tmp_path):
    """A best found after the checkpoint a run resumes from came from steps taken again:
    the resumed run has the checkpoint's best, on disk and in memory."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    keeper = BestCheckpoint(TARGETS, tmp_path, str(model_dir))
    fetch = lambda w: w["ref"][0]  # noqa: E731
    empty = checkpoint_dir(tmp_path, 5)
    keeper.keep(empty)  # no best yet: nothing kept
    assert not (empty / "best").exists()
    keeper.offer("tictactoe/minimax", {"non_loss": 0.4}, shared(model, 10), fetch)
    at_10 = keeper.weights["checksum"]
    kept = checkpoint_dir(tmp_path, 10)
    keeper.keep(kept)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    keeper.offer(
        "tictactoe/minimax", {"non_loss": 0.7}, shared(model, 12), fetch
    )  # after step 10's checkpoint
    assert json.loads((kept / "best" / "best.json").read_text())["step"] == 10  # the copy stayed as it was

    resumed = BestCheckpoint(TARGETS, tmp_path, str(model_dir), put=lambda blob: blob, resume_from=kept)
    assert (resumed.value, resumed.weights["step"], resumed.weights["checksum"]) == (0.4, 10, at_10)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 10
    assert resumed.offer("tictactoe/minimax", {"non_loss": 0.5}, shared(model, 12), fetch)  # beats 0.4 again

    # from a checkpoint that had no best yet, the best found after it goes
    none = BestCheckpoint(TARGETS, tmp_path, str(model_dir), put=lambda blob: blob, resume_from=empty)
    assert none.weights is None and not (tmp_path / "best").exists()
    # a checkpoint from before copies were kept: a best no later than it stays
    keeper.offer("tictactoe/minimax", {"non_loss": 0.9}, shared(model, 14), fetch)
    older = BestCheckpoint(
        TARGETS, tmp_path, str(model_dir), put=lambda blob: blob, resume_from=checkpoint_dir(tmp_path, 20)
    )
    assert (older.value, older.weights["step"]) == (0.9, 14)


def test_a_best_found_at_the_checkpoints_own_step_after_it_was_written_is_kept(model_dir, tmp_path):
    """The driver writes step S's checkpoint (and its copy of the best) while S's evaluation
    is still running; that evaluation then finds a new best of step S's weights. A resume
    from S takes no step up to S again, so that best stays (the checkpoint's older copy
    replaced it, and with S's evaluation already logged nothing measured it again)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    keeper = BestCheckpoint(TARGETS, tmp_path, str(model_dir))
    fetch = lambda w: w["ref"][0]  # noqa: E731
    keeper.offer("tictactoe/minimax", {"non_loss": 0.5}, shared(model, 10), fetch)
    at_20 = checkpoint_dir(tmp_path, 20)
    keeper.keep(at_20)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    keeper.offer("tictactoe/minimax", {"non_loss": 0.7}, shared(model, 20), fetch)
    resumed = BestCheckpoint(TARGETS, tmp_path, str(model_dir), put=lambda blob: blob, resume_from=at_20)
    assert (resumed.value, resumed.weights["step"]) == (0.7, 20)
    assert resumed.weights["checksum"] == keeper.weights["checksum"]
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 20


def test_an_evaluation_of_no_games_is_never_the_best(model_dir, tmp_path):
    """Every game too long for the context: its rates read 0, which under a '<=' rule
    nothing could beat afterwards."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    keeper = BestCheckpoint({"tictactoe/random/illegal": "<= 0.01"}, tmp_path, str(model_dir))
    fetch = lambda w: w["ref"][0]  # noqa: E731
    assert not keeper.offer("tictactoe/random", {"illegal": 0.0, "games": 0}, shared(model, 10), fetch)
    assert keeper.offer("tictactoe/random", {"illegal": 0.2, "games": 8}, shared(model, 20), fetch)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 20


def test_best_acceptance_reports_the_best_weights_and_the_final_gap():
    after = {"tictactoe/minimax": {"non_loss": 0.88}}
    best_after = {"tictactoe/minimax": {"non_loss": 0.92}}
    figures = best_acceptance(TARGETS, after, best_after)
    assert figures["best/tictactoe/minimax/non_loss"] == {"value": 0.92, "target": ">= 0.90", "met": True}
    gap = figures["final_minus_best/tictactoe/minimax/non_loss"]
    assert gap["value"] == pytest.approx(-0.04) and gap["target"] == ">= -0.05" and gap["met"]
    lower = best_acceptance({"kuhn/exploitability/exploitability": "<= 0.05"}, {}, {})
    assert lower["final_minus_best/kuhn/exploitability/exploitability"] == {
        "value": None,
        "target": "<= 0.05",
        "met": False,
    }
    assert best_acceptance({}, after, best_after) == {}


def test_a_gain_over_an_earlier_stage_ranks_by_the_field_it_is_a_gain_of():
    targets = {"arithmetic/held_out/accuracy_gain_over_sft": ">= 0.10"}
    assert best_rule(targets) == ("arithmetic/held_out", "accuracy", True)
    after = {"arithmetic/held_out": {"accuracy": 0.35, "accuracy_gain_over_sft": 0.15}}
    best_after = {"arithmetic/held_out": {"accuracy": 0.38, "accuracy_gain_over_sft": 0.18}}
    figures = best_acceptance(targets, after, best_after)
    assert figures["best/arithmetic/held_out/accuracy_gain_over_sft"]["value"] == 0.18
    gap = figures["final_minus_best/arithmetic/held_out/accuracy_gain_over_sft"]
    assert gap["value"] == pytest.approx(-0.03) and gap["met"]  # the accuracies' difference
