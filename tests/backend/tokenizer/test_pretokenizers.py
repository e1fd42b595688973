"""backend.tokenizer.pretokenizers: llama.cpp's `tokenizer.ggml.pre` names select the right
split regexes, every registered one compiles, and unknown names fall back to
GPT-2's with a warning."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from backend.tokenizer import Tokenizer
from backend.tokenizer.pretokenizers import PRE_SPLITS, byte_level_pre_tokenizer
from backend.tokenizer.token_pieces import BYTE_TO_CHAR


def _pieces(t: Tokenizer, text: str) -> list[str]:
    pre = t._backend.pre_tokenizer
    assert pre is not None
    return [p for p, _ in pre.pre_tokenize_str(text)]


def test_pre_tokenizer_by_name(metadata: dict[str, Any]) -> None:
    def build(pre: str) -> Tokenizer:
        return Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.pre": pre})

    assert _pieces(build("smollm"), "ab 1234") == ["ab", "Ġ", "1", "2", "3", "4"]
    assert _pieces(build("gpt-2"), "ab 1234") == ["ab", "Ġ1234"]
    assert _pieces(build("llama-bpe"), "ab 1234567") == ["ab", "Ġ", "123", "456", "7"]
    assert _pieces(build("qwen2"), "ab 123") == ["ab", "Ġ", "1", "2", "3"]
    assert _pieces(build("llama-bpe"), "I'LL go") == ["I", "'LL", "Ġgo"]
    assert build("llama-bpe").add_bos is False  # the file's add_bos_token=False wins
    no_flag = {k: v for k, v in metadata.items() if k != "tokenizer.ggml.add_bos_token"}
    assert Tokenizer.from_gguf_metadata({**no_flag, "tokenizer.ggml.pre": "llama-bpe"}).add_bos
    assert not Tokenizer.from_gguf_metadata({**no_flag, "tokenizer.ggml.pre": "gpt-2"}).add_bos


def test_every_known_pre_tokenizer_compiles(caplog: pytest.LogCaptureFixture) -> None:
    text = "Hello World 1234567 don't 日本語 😀  \n\t x==y; 3.14 <sentinel:1> IMGIMGAZ"
    with caplog.at_level(logging.WARNING, logger="backend.tokenizer.pretokenizers"):
        for name in PRE_SPLITS:
            if not name:
                continue
            pieces = byte_level_pre_tokenizer(name).pre_tokenize_str(text)
            assert "".join(p for p, _ in pieces) == "".join(
                BYTE_TO_CHAR[b] for b in text.encode()
            ), name
    assert caplog.text == ""


def test_unknown_pre_tokenizer_falls_back_to_gpt2(
    metadata: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="backend.tokenizer.pretokenizers"):
        t = Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.pre": "no-such-pre"})
    assert "no-such-pre" in caplog.text
    assert _pieces(t, "ab 1234") == ["ab", "Ġ1234"]
    assert t.encode("Hello world") == [19556, 905]
