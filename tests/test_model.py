"""The default policy's character tokenizer and its dtype rule (selfplay/model.py)."""

from __future__ import annotations

import string

import torch

from selfplay.device import native_bf16, pick_dtype
from selfplay.model import CHARACTERS, SPECIAL_TOKENS, UNKNOWN, build_tokenizer


def test_every_character_round_trips_one_token_each():
    tok = build_tokenizer()
    text = string.printable[:95] + "\n"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text) and tok.decode(ids) == text


def test_an_unknown_character_has_its_own_token_not_the_question_mark():
    tok = build_tokenizer()
    ids = tok("a?é€", add_special_tokens=False).input_ids
    question, unknown = tok.convert_tokens_to_ids("?"), tok.convert_tokens_to_ids(UNKNOWN)
    assert ids == [tok.convert_tokens_to_ids("a"), question, unknown, unknown] and question != unknown
    assert tok.decode(ids, skip_special_tokens=True) == "a?"  # as vLLM renders replies: dropped, not "?"


def test_the_ids_of_earlier_models_stay_where_they_were():
    tok = build_tokenizer()
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS + CHARACTERS] == list(
        range(len(SPECIAL_TOKENS) + len(CHARACTERS))
    )
    # pinned, not read from the lists above (a token inserted into them moved every id)
    tokens = [
        "<pad>",
        "<bos>",
        "<eos>",
        "<novice>",
        "<intermediate>",
        "<expert>",
        "0",
        "a",
        "A",
        "!",
        "~",
        " ",
    ]
    ids = [0, 1, 2, 3, 4, 5, 6, 16, 42, 68, 99, 100]
    assert [tok.convert_tokens_to_ids(t) for t in [*tokens, "\n", "<unk>"]] == [*ids, 101, 102]
    assert tok.unk_token == UNKNOWN and tok.unk_token_id == len(SPECIAL_TOKENS) + len(CHARACTERS)


def test_dtype_auto_is_bf16_only_where_the_hardware_computes_it():
    assert pick_dtype("auto", native=True) == "bfloat16"
    assert pick_dtype("auto", native=False) == "float32"
    for named in ("bfloat16", "float32", "float16"):  # a named dtype is kept, native or not
        assert pick_dtype(named, native=False) == named
        assert pick_dtype(named, native=True) == named


def test_native_bf16_reads_torchs_own_cpu_probes(monkeypatch):
    """A CPU counts as native with AMX tiles or AVX512-BF16 and not with AVX2 alone."""
    for amx, avx512_bf16, native in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        assert native_bf16("cpu") is native
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probe
    assert native_bf16("cpu") is False
