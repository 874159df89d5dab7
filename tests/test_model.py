"""The default policy's character tokenizer (selfplay/model.py)."""

from __future__ import annotations

import string

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
    assert tok.unk_token == UNKNOWN and tok.unk_token_id == len(SPECIAL_TOKENS) + len(CHARACTERS)
