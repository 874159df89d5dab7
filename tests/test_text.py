"""selfplay/text.py: a model's tokenizer read by `tokenizers` alone encodes and decodes as
transformers does, and any directory where transformers would do otherwise is read by
transformers; the actors that start beside the learner and the engines import neither
torch nor transformers (each costs seconds of the same 2 cores at every run's start)."""

from __future__ import annotations

import json
import random
import shutil
import string
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from selfplay.text import plain_tokenizer_file, text_codec

TEXTS = [
    "",
    string.printable,  # every character of the vocabulary, and \t \r \x0b \x0c (unknown)
    "347: three hundred and forty-seven",
    "a<eos>b <bos><pad> <novice>x<expert>",  # special tokens written in the text
    "<eo s> <<eos>> naïve – ∑ 😀",  # near-specials, and characters outside the vocabulary
    "f(4)==(4+3)*2\n  assert f(0) == 6",
    "it is n't so . is it ? <end>",  # what clean-up changes; a token only one case defines
]


def hf(model_dir) -> tuple:
    auto = AutoTokenizer.from_pretrained(str(model_dir))
    return lambda text: auto(text).input_ids, lambda ids: auto.decode(ids, skip_special_tokens=True)


def test_the_projects_tokenizer_is_read_plain_and_agrees_with_transformers(tiny_model):
    assert plain_tokenizer_file(tiny_model) is not None
    encode, decode = text_codec(tiny_model)
    hf_encode, hf_decode = hf(tiny_model)
    for text in TEXTS:
        assert encode(text) == hf_encode(text), text
        assert decode(encode(text)) == hf_decode(hf_encode(text)), text
    rng = random.Random(0)
    vocab = len(AutoTokenizer.from_pretrained(tiny_model))
    for _ in range(200):  # any ids, special ones (0-5, unknown) among them
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(12))]
        assert decode(ids) == hf_decode(ids), ids


def test_a_checkpoints_resaved_tokenizer_is_still_read_plain(tiny_model, tmp_path):
    """The learner saves the tokenizer with every checkpoint, and transformers adds is_local
    and local_files_only to its config: every checkpoint's model/ took the slow path."""
    import shutil

    saved = tmp_path / "model"
    shutil.copytree(tiny_model, saved)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(saved)
    assert plain_tokenizer_file(saved) is not None


@pytest.mark.parametrize(
    "change",
    [
        {"add_eos_token": True},  # transformers rewrites the post-processor on loading
        {"clean_up_tokenization_spaces": True},  # and cleans up decoded text
        {"tokenizer_class": "LlamaTokenizer"},  # a model's own class: may rebuild the tokenizer
        {"eos_token": "<end>"},  # a named token the file lacks: transformers adds it
        {"extra_special_tokens": ["<tool>"]},  # any key not known to be inert
    ],
    ids=["add-eos", "clean-up", "own-class", "missing-special", "unknown-key"],
)
def test_a_tokenizer_that_transformers_would_change_is_read_by_transformers(tiny_model, tmp_path, change):
    model = shutil.copytree(tiny_model, tmp_path / "m")
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, **change}))
    assert plain_tokenizer_file(model) is None
    if change.get("tokenizer_class") == "LlamaTokenizer":
        return  # not a loadable directory for that class; refused is what counts
    encode, decode = text_codec(model)
    hf_encode, hf_decode = hf(model)
    for text in TEXTS:
        assert encode(text) == hf_encode(text), text
        assert decode(encode(text)) == hf_decode(hf_encode(text)), text
    # where the file alone would have read otherwise (this transformers takes add_eos_token
    # as nothing on the generic class: refused all the same)
    plain_encode, plain_decode = text_codec(tiny_model)
    differs = any(
        plain_decode(plain_encode(t)) != decode(encode(t)) or plain_encode(t) != encode(t) for t in TEXTS
    )
    assert differs == ("clean_up_tokenization_spaces" in change or "eos_token" in change)


def test_the_actors_beside_the_learner_and_engines_import_neither_torch_nor_transformers(tiny_model):
    """The controller (which deserializes the learner's handle: Ray imports an actor's class
    module wherever its handle arrives, so learner/actor.py must not import torch), the
    verifier with its tokenizer, and the buffer with its preference log."""
    code = f"""
import sys
import actors.buffer, actors.controller, learner.actor, selfplay.program
from actors.verifier import Verifier
from selfplay.text import text_codec
Verifier.for_model({tiny_model!r})
text_codec({tiny_model!r})
print(sorted({{"torch", "transformers", "vllm"}} & set(sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"they pull in {out.stdout.strip()}"


def test_eval_checks_its_arguments_and_the_opponents_tokenizer_before_an_engine(tiny_model, tmp_path):
    """`selfplay eval`: an unknown game, --games -5 or --max-tokens 0 came after an engine
    started (some as tracebacks); a model opponent with another tokenizer played on the
    checkpoint's token ids, garbage to it."""
    import json
    import shutil

    from selfplay.cli import build_parser, eval_inputs
    from selfplay.config import ConfigError

    def args(*extra):
        return build_parser().parse_args(["eval", "--checkpoint", tiny_model, *extra])

    assert eval_inputs(args()) == (tiny_model, None)
    for extra, message in [
        (("--game", "chess"), "--game: game: unknown game 'chess'"),
        (("--games", "-5"), "--games: at least 1, got -5"),
        (("--max-tokens", "0"), "--max-tokens: at least 1, got 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            eval_inputs(args(*extra))
    with pytest.raises(FileNotFoundError, match="neither an HF model directory"):
        eval_inputs(args("--opponent", str(tmp_path / "minmax")))
    same = tmp_path / "same"
    shutil.copytree(tiny_model, same)
    assert eval_inputs(args("--opponent", str(same))) == (tiny_model, str(same))
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]  # another tokenizer: two digits swapped
    (other / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="its tokenizer is not the checkpoint's"):
        eval_inputs(args("--opponent", str(other)))


def test_eval_reads_whether_the_run_prompted_by_skill(tmp_path, tiny_model):
    """A checkpoint trained with generator.skill_prompts reads each observation after the
    opponent's tier token, and the run measured it so: `selfplay eval` evaluated it without."""
    import shutil

    from selfplay.cli import trained_with_skill_prompts
    from selfplay.config import load_config, save_config

    run = tmp_path / "run"
    step = run / "checkpoints" / "step_0000007"
    shutil.copytree(tiny_model, step / "model")
    save_config(load_config(None, ["generator.skill_prompts=true"]), run / "config.yaml")
    assert trained_with_skill_prompts(str(step)) and trained_with_skill_prompts(str(step / "model"))
    shutil.copytree(tiny_model, run / "best")
    assert trained_with_skill_prompts(str(run / "best"))
    save_config(load_config(None, []), run / "config.yaml")
    assert not trained_with_skill_prompts(str(step))
    assert not trained_with_skill_prompts(tiny_model)  # a model directory of no run
