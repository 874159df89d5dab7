"""A model directory's tokenizer as two functions, for actors that only turn token ids into
text and back (the verifier, the buffer's preference log). Importing transformers costs ~5 s
of CPU in each such actor, taken from the learner and engine starting beside it on the same
cores; a tokenizer this project builds (selfplay/model.py) is read by `tokenizers` alone.

The fast path is taken only where transformers would use the tokenizer file as it is: the
generic class, no setting that transformers applies on loading (adding bos or eos, cleaning
up spaces, extra special tokens, ...), every named special token already a special token of
the file, no truncation or padding. Any other directory (a Qwen or Llama tokenizer, a slow
one) goes through AutoTokenizer, as before."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

# tokenizer_class values that load tokenizer.json as it is (transformers 5 and 4)
GENERIC = {"TokenizersBackend", "PreTrainedTokenizerFast"}
# tokenizer_config.json keys that change nothing of encoding or decoding
INERT = {
    "backend",
    "tokenizer_class",
    "model_max_length",
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "is_local",  # transformers 5.19 adds these two when it saves a tokenizer (every checkpoint)
    "local_files_only",
}
NAMED = ("bos_token", "eos_token", "pad_token", "unk_token")

Encode = Callable[[str], list[int]]
Decode = Callable[[list[int]], str]


def plain_tokenizer_file(model_path: str | Path) -> Path | None:
    """`model_path`'s tokenizer.json where transformers would encode and decode exactly as
    the file does; None otherwise."""
    path = Path(model_path)
    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
        spec = json.loads((path / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return None
    if config.get("tokenizer_class") not in GENERIC or not set(config) <= INERT:
        return None
    if spec.get("post_processor") is None or spec.get("truncation") or spec.get("padding"):
        return None
    special = {t["content"] for t in spec.get("added_tokens", []) if t.get("special")}
    named = [config[k] for k in NAMED if k in config]
    if not all(isinstance(t, str) and t in special for t in named):
        return None
    return path / "tokenizer.json"


def text_codec(model_path: str | Path) -> tuple[Encode, Decode]:
    """`encode(text)`: token ids with the tokenizer's special tokens (as
    `tokenizer(text).input_ids`); `decode(ids)`: text without special tokens (as vLLM renders
    a reply, `tokenizer.decode(ids, skip_special_tokens=True)`)."""
    plain = plain_tokenizer_file(model_path)
    if plain is not None:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(plain))
        return (
            lambda text: tokenizer.encode(text).ids,
            lambda ids: tokenizer.decode([int(i) for i in ids], skip_special_tokens=True),
        )
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(model_path))
    return lambda text: auto(text).input_ids, lambda ids: auto.decode(ids, skip_special_tokens=True)
