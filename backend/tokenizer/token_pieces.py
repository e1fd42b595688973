"""Vocabulary pieces: token types, the raw bytes each piece stands for, and BPE merges.

A vocabulary stores its tokens as text in one of two spellings: byte-level BPE (GPT-2's
printable stand-in character for each byte, 'Ġ' for a space) or sentencepiece ('▁' for a space,
`<0xNN>` byte-fallback tokens). These helpers turn a piece back into its bytes, say which pieces
are special (matched whole in input, silent in output, ending generation), and derive or parse
the merges a BPE model needs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from tokenizers import AddedToken
from tokenizers import Tokenizer as _HFTokenizer

# GGUF `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
TOKEN_UNDEFINED = 0
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Types whose text is matched whole in input text (llama.cpp's special-token cache).
MATCHED_WHOLE = frozenset({TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN})
# Types that stand for no text when decoding with skip_special_tokens.
SILENT = frozenset({TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_UNUSED, TOKEN_UNDEFINED})

# Token texts that end generation (llama.cpp's special_eog_ids list), used when the token is a
# special (control / user-defined / unknown) token of the vocabulary.
EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "<end_of_utterance>",
        "<\uff5cend\u2581of\u2581sentence\uff5c>",  # DeepSeek
    }
)


def gguf_token_types(
    raw_types: Sequence[Any] | None, n: int, *, control: Iterable[int | None], unknown: int | None
) -> list[int]:
    """`tokenizer.ggml.token_type` for `n` tokens; when the file has none (or too few), every
    token is normal except the `control` ids (BOS/EOS/padding) and the `unknown` one."""
    if raw_types is not None and len(raw_types) >= n:
        return [int(t) for t in raw_types[:n]]
    types = [TOKEN_NORMAL] * n
    for i in control:
        if i is not None:
            types[i] = TOKEN_CONTROL
    if unknown is not None:
        types[unknown] = TOKEN_UNKNOWN
    return types


SPM_SPACE = "\u2581"  # '▁'
BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def byte_level_bytes(token: str) -> bytes:
    """The bytes a byte-level BPE piece stands for ('Ġ' -> b' ')."""
    try:
        return bytes([CHAR_TO_BYTE[c] for c in token])
    except KeyError:
        # A character outside the byte alphabet (a raw-text token): keep it as UTF-8.
        return b"".join(
            bytes([CHAR_TO_BYTE[c]]) if c in CHAR_TO_BYTE else c.encode("utf-8") for c in token
        )


def spm_bytes(token: str) -> bytes:
    """The bytes a sentencepiece piece stands for ('▁' -> b' ', '<0x0A>' -> b'\\n')."""
    m = BYTE_TOKEN.match(token)
    if m is not None:
        return bytes([int(m.group(1), 16)])
    return token.replace(SPM_SPACE, " ").encode("utf-8")


def mark_byte_tokens(tokens: Sequence[str], types: list[int]) -> None:
    """Give normal `<0xNN>` pieces the byte type, so they decode through their <0xNN> text."""
    for i, t in enumerate(tokens):
        if types[i] == TOKEN_NORMAL and BYTE_TOKEN.match(t):
            types[i] = TOKEN_BYTE


def piece_table(
    tokens: Sequence[str], types: Sequence[int], decode: Callable[[str], bytes]
) -> list[bytes]:
    """id -> raw bytes (normal pieces through `decode`); b'' for special tokens."""
    table: list[bytes] = []
    for text, kind in zip(tokens, types, strict=True):
        if kind in SILENT:
            table.append(b"")
        elif kind == TOKEN_USER_DEFINED:
            table.append(text.encode("utf-8"))
        elif kind == TOKEN_BYTE:
            table.append(spm_bytes(text))
        else:
            table.append(decode(text))
    return table


# ---- special pieces ------------------------------------------------------------------------


def end_of_generation_ids(tokens: Sequence[str], types: Sequence[int]) -> set[int]:
    """Ids of the special pieces whose text ends generation (as llama.cpp finds them)."""
    by_text = {
        text: token_id
        for token_id, (text, kind) in enumerate(zip(tokens, types, strict=True))
        if text in EOG_TEXTS and kind in MATCHED_WHOLE
    }
    if "<|return|>" in by_text and "<|call|>" in by_text:
        # gpt-oss (harmony): '<|end|>' closes a message, not the reply (as llama.cpp)
        by_text.pop("<|end|>", None)
    return set(by_text.values())


class SpecialIds(NamedTuple):
    bos: int | None
    eos: int | None
    unk: int | None
    pad: int | None
    eos_ids: list[int]  # generation_config's (or config's) ids that end generation


def hf_special_ids(
    backend: _HFTokenizer,
    config: Mapping[str, Any],
    model_config: Mapping[str, Any],
    generation_config: Mapping[str, Any],
) -> SpecialIds:
    """A HuggingFace folder's special token ids: tokenizer_config.json's tokens first, then the
    ids in generation_config.json / config.json."""

    def token_id_of(value: Any) -> int | None:
        if isinstance(value, dict):
            value = value.get("content")
        if not isinstance(value, str):
            return None
        return backend.token_to_id(value)

    def ids_of(value: Any) -> list[int]:
        if isinstance(value, int):
            return [value]
        if isinstance(value, list):
            return [int(v) for v in value if isinstance(v, int)]
        return []

    bos_id = token_id_of(config.get("bos_token"))
    if bos_id is None and isinstance(model_config.get("bos_token_id"), int):
        bos_id = model_config["bos_token_id"]
    eos_id = token_id_of(config.get("eos_token"))
    config_eos = ids_of(generation_config.get("eos_token_id")) or ids_of(
        model_config.get("eos_token_id")
    )
    if eos_id is None and config_eos:
        eos_id = config_eos[0]
    unk_id = token_id_of(config.get("unk_token"))
    pad_id = token_id_of(config.get("pad_token"))
    return SpecialIds(bos=bos_id, eos=eos_id, unk=unk_id, pad=pad_id, eos_ids=config_eos)


def add_whole_tokens(backend: _HFTokenizer, tokens: Sequence[str], types: Sequence[int]) -> None:
    """Control/unknown tokens become special added tokens and user-defined ones plain added
    tokens, so that both are matched whole in input text (llama.cpp does the same)."""
    special = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i, t in enumerate(types)
        if t in (TOKEN_CONTROL, TOKEN_UNKNOWN)
    ]
    user = [
        AddedToken(tokens[i], special=False, normalized=False)
        for i, t in enumerate(types)
        if t == TOKEN_USER_DEFINED
    ]
    if special:
        backend.add_special_tokens(special)
    if user:
        backend.add_tokens(user)


# ---- merges --------------------------------------------------------------------------------


def split_merge(merge: str) -> tuple[str, str]:
    # As llama.cpp: the separator is the first space after the first character.
    pos = merge.find(" ", 1)
    if pos < 0:
        raise ValueError(f"malformed merge {merge!r} in tokenizer.ggml.merges")
    return merge[:pos], merge[pos + 1 :]


def spm_merges(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int], vocab: Mapping[str, int]
) -> list[tuple[str, str]]:
    """Merges implied by a sentencepiece vocabulary: every split of a token into two vocabulary
    pieces, best-scoring result first (as transformers' `generate_merges` orders them)."""
    found: list[tuple[str, str, float]] = []
    for token_id, token in enumerate(tokens):
        if types[token_id] not in (TOKEN_NORMAL, TOKEN_USER_DEFINED) or len(token) < 2:
            continue
        score = float(scores[token_id]) if token_id < len(scores) else 0.0
        local = [
            (token[:i], token[i:], score)
            for i in range(1, len(token))
            if token[:i] in vocab and token[i:] in vocab
        ]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        found.extend(local)
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in found]


# ---- tokenizer.json decoders ---------------------------------------------------------------


def hf_byte_decoder(
    spec: Mapping[str, Any], backend: _HFTokenizer
) -> tuple[Callable[[str], bytes], bool]:
    """How the pieces of a tokenizer.json (`spec`, loaded as `backend`) turn into bytes, judged
    from its decoder, and whether decoding drops the leading space."""
    kinds = _decoder_kinds(spec.get("decoder"))
    if "ByteLevel" in kinds:
        return byte_level_bytes, False
    if kinds & {"Metaspace", "Replace", "ByteFallback"}:
        return spm_bytes, _strips_leading_space(spec.get("decoder"))

    def via_backend(token: str) -> bytes:
        token_id = backend.token_to_id(token)
        if token_id is None:
            return token.encode("utf-8")
        return backend.decode([token_id], skip_special_tokens=False).encode("utf-8")

    return via_backend, False


def _decoder_kinds(spec: Any) -> set[str]:
    """The decoder types a tokenizer.json `decoder` spec uses, nested Sequences included."""
    if not isinstance(spec, dict):
        return set()
    kinds = {str(spec.get("type"))}
    for child in spec.get("decoders") or ():
        kinds |= _decoder_kinds(child)
    return kinds


def _strips_leading_space(spec: Any) -> bool:
    """Whether a tokenizer.json decoder drops the space the normalizer put before the text."""
    if not isinstance(spec, dict):
        return False
    kind = spec.get("type")
    if kind == "Strip":
        return spec.get("content") == " " and int(spec.get("start", 0)) > 0
    if kind == "Metaspace":
        return spec.get("prepend_scheme", "always") != "never" and bool(
            spec.get("add_prefix_space", True)
        )
    return any(_strips_leading_space(child) for child in spec.get("decoders") or ())
