"""The BPE model a GGUF file's `tokenizer.ggml.*` metadata describes, built in code.

Two kinds of vocabulary: byte-level BPE ('gpt2': merges given, text split by the
pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`) and sentencepiece BPE ('llama':
merges given or derived from the scores, '▁' for spaces, byte-fallback tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models

from backend.tokenizer.pretokenizers import (
    PRE_ADD_BOS,
    PRE_IGNORE_MERGES,
    byte_level_pre_tokenizer,
    spm_normalizer,
)
from backend.tokenizer.token_pieces import (
    SPM_SPACE,
    byte_level_bytes,
    mark_byte_tokens,
    split_merge,
    spm_bytes,
    spm_merges,
)

GGUF_MODELS = ("gpt2", "llama")


class GGUFModel(NamedTuple):
    backend: _HFTokenizer
    byte_decoder: Callable[[str], bytes]  # a piece's text -> the bytes it stands for
    add_bos_default: bool  # when the file does not say tokenizer.ggml.add_bos_token
    strip_leading_space: bool  # decoding drops the space added before the first word


def gguf_bpe_model(
    metadata: Mapping[str, Any], tokens: list[str], types: list[int], unk_id: int | None
) -> GGUFModel:
    """The backend for `tokens` (`types` gets byte tokens marked, for sentencepiece)."""
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    merges_raw = metadata.get("tokenizer.ggml.merges")
    merges = [split_merge(m) for m in merges_raw] if merges_raw else None
    if metadata.get("tokenizer.ggml.model") == "gpt2":
        pre = str(metadata.get("tokenizer.ggml.pre", "") or "")
        return _byte_level(vocab, merges, pre)
    if merges is None:
        scores = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        merges = spm_merges(tokens, scores, types, vocab)
    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    unk = tokens[unk_id] if unk_id is not None else None
    # byte tokens are decoded through their <0xNN> text, whatever their stored type
    mark_byte_tokens(tokens, types)
    return _sentencepiece(vocab, merges, unk, add_prefix)


def _byte_level(vocab: dict[str, int], merges: list[tuple[str, str]] | None, pre: str) -> GGUFModel:
    if merges is None:
        raise ValueError("GGUF byte-level (gpt2) tokenizer has no tokenizer.ggml.merges")
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in PRE_IGNORE_MERGES)
    backend = _HFTokenizer(bpe)
    backend.pre_tokenizer = byte_level_pre_tokenizer(pre)
    backend.decoder = decoders.ByteLevel()
    return GGUFModel(backend, byte_level_bytes, pre in PRE_ADD_BOS, False)


def _sentencepiece(
    vocab: dict[str, int], merges: list[tuple[str, str]], unk: str | None, add_prefix: bool
) -> GGUFModel:
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    backend = _HFTokenizer(bpe)
    backend.normalizer = spm_normalizer(add_prefix)
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return GGUFModel(backend, spm_bytes, True, add_prefix)
