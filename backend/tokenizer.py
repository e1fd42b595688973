"""Text <-> token ids for the bundled engine, built from local files only.

Two sources:

* a GGUF file's `tokenizer.ggml.*` metadata (`Tokenizer.from_gguf_metadata`): the vocabulary,
  merges and token types are turned into a HuggingFace `tokenizers.Tokenizer` in code, with the
  pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`, so the ids match what llama.cpp (and
  transformers' GGUF loader) produce;
* a HuggingFace folder (`Tokenizer.from_hf_folder`): `tokenizer.json` plus the config files.

Encoding goes through `tokenizers` (Rust). Decoding does not: every id maps once to the raw bytes
it stands for (`token_bytes`), so `decode` is a join plus one UTF-8 decode, and
`IncrementalDetokenizer` can stream text per generated token without ever splitting a character.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

logger = logging.getLogger(__name__)

__all__ = ["IncrementalDetokenizer", "Tokenizer"]

# GGUF `tokenizer.ggml.token_type` values (llama.cpp's llama_token_type).
TOKEN_UNDEFINED = 0
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Types whose text is matched whole in input text (llama.cpp's special-token cache).
_MATCHED_WHOLE = frozenset({TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN})
# Types that stand for no text when decoding with skip_special_tokens.
_SILENT = frozenset({TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_UNUSED, TOKEN_UNDEFINED})

# Token texts that end generation (llama.cpp's special_eog_ids list), used when the token is a
# special (control / user-defined / unknown) token of the vocabulary.
_EOG_TEXTS = frozenset(
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

_SPM_SPACE = "\u2581"  # '▁'
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def _bytes_to_unicode() -> dict[int, str]:
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


_BYTE_TO_CHAR = _bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


def _byte_level_bytes(token: str) -> bytes:
    try:
        return bytes([_CHAR_TO_BYTE[c] for c in token])
    except KeyError:
        # A character outside the byte alphabet (a raw-text token): keep it as UTF-8.
        return b"".join(
            bytes([_CHAR_TO_BYTE[c]]) if c in _CHAR_TO_BYTE else c.encode("utf-8") for c in token
        )


def _spm_bytes(token: str) -> bytes:
    m = _BYTE_TOKEN.match(token)
    if m is not None:
        return bytes([int(m.group(1), 16)])
    return token.replace(_SPM_SPACE, " ").encode("utf-8")


# --------------------------------------------------------------------------------------------
# Pre-tokenizers: llama.cpp's `tokenizer.ggml.pre` names -> the regexes it splits text with
# (src/llama-vocab.cpp, llm_tokenizer_bpe). Each regex is applied in turn, keeping both the
# matches and the text between them ("isolated"), then the pieces are byte-level encoded.
# Where llama.cpp rewrote a pattern for std::regex, the upstream tokenizer.json form is used.
# --------------------------------------------------------------------------------------------

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SEED_CODER = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}"
    r"| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BAILINGMOE = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]|\s+(?!\S)|\s+"
)
_BLOOM = r" ?[^(\s|.,!?…。，、।۔،)]+"  # noqa: RUF001
_DEEPSEEK3 = (
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Cased letters (DeepSeek LLM). Escapes keep the code points that Unicode normalization would
# fold into others (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126, U+212A).
_DEEPSEEK_LLM_LETTERS = (
    "\\s?["
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚ"
    "Ḁ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌῐ-\u1fd3ῖ-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃"  # noqa: RUF001
    "]+"
)
_CJK = "[一-龥ࠀ-一가-퟿]+"

# pre-tokenizer name -> the regexes split with, in order (then byte-level encoding)
_PRE_SPLITS: dict[str, tuple[str, ...]] = {}
_PRE_IGNORE_MERGES: set[str] = set()
_PRE_ADD_BOS: set[str] = set()


def _register(names: Iterable[str], regexes: tuple[str, ...], *, ignore_merges: bool = False,
              add_bos: bool = False) -> None:
    for name in names:
        _PRE_SPLITS[name] = regexes
        if ignore_merges:
            _PRE_IGNORE_MERGES.add(name)
        if add_bos:
            _PRE_ADD_BOS.add(name)


_register(
    ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
     "mellum", "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais",
     "trillion", "granite-docling", "exaone4"),
    (_GPT2,),
)
_register(
    ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"),
    (r"\p{N}", _GPT2),
)
_register(
    ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
     "jina-v5-nano"),
    (_LLAMA3,), ignore_merges=True, add_bos=True,
)
_register(("dbrx", "smaug-bpe", "glm4", "chatglm-bpe"), (_LLAMA3,))
_register(
    ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
     "solar-open", "grok-2"),
    (_QWEN2,),
)
_register(("qwen35",), (_QWEN35,))
_register(("tekken",), (_TEKKEN,), ignore_merges=True, add_bos=True)
_register(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), (_GPT4O,))
_register(("falcon",), (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, "[0-9][0-9][0-9]"))
_register(("poro-chat", "bloom", "gpt3-finnish"), (_BLOOM,))
_register(("viking",), (_BLOOM, r"\p{N}"))
_register(("seed-coder",), (_SEED_CODER,))
_register(("bailingmoe", "bailingmoe2", "llada-moe"), (_BAILINGMOE,))
_register(("deepseek-coder",), ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"))
_register(
    ("deepseek-llm",),
    ("[\r\n]", _DEEPSEEK_LLM_LETTERS, r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", _CJK,  # noqa: RUF001
     r"\p{N}+"),
)
_register(
    ("deepseek-v3", "hunyuan-dense"),
    (r"\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", _DEEPSEEK3),  # noqa: RUF001
)
_register(
    ("chameleon",),
    ("<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", r"\p{N}",
     r"[\p{P}!-/:-@\[-`{-~]", _GPT2),
    add_bos=True,
)
# llama.cpp's "default" (also used when a file names no pre-tokenizer).
_DEFAULT_SPLITS = (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", "[0-9][0-9][0-9]")
_register(("default", ""), _DEFAULT_SPLITS)


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if not pre:
        logger.warning("GGUF file names no pre-tokenizer (tokenizer.ggml.pre): using llama.cpp's "
                       "'default' split regexes")
    splits = _PRE_SPLITS.get(pre)
    if splits is None:
        logger.warning(
            "unknown GGUF pre-tokenizer %r: falling back to the GPT-2 split regex; "
            "tokenization may differ from the model's own tokenizer", pre,
        )
        splits = (_GPT2,)
    steps: list[pre_tokenizers.PreTokenizer] = []
    for regex in splits:
        if regex == r"\p{N}":
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        else:
            steps.append(pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def _spm_merges(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int],
                vocab: Mapping[str, int]) -> list[tuple[str, str]]:
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


# --------------------------------------------------------------------------------------------
# Chat templates
# --------------------------------------------------------------------------------------------


class _TemplateRaised(Exception):
    """raise_exception() called by a chat template."""


def _compile_template(source: str) -> Any:
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _GenerationTag(Extension):
        # transformers' `{% generation %}...{% endgeneration %}` (marks assistant text for masks):
        # rendering it is just rendering its body.
        tags = {"generation"}  # noqa: RUF012

        def parse(self, parser: Any) -> list[nodes.Node]:
            next(parser.stream)
            return list(parser.parse_statements(("name:endgeneration",), drop_needle=True))

    def raise_exception(message: str) -> None:
        raise _TemplateRaised(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


class Tokenizer:
    """Encode/decode for one model; build it with `from_gguf_metadata` or `from_hf_folder`."""

    def __init__(
        self,
        backend: _HFTokenizer,
        *,
        tokens: Sequence[str],
        token_types: Sequence[int],
        byte_decoder: Callable[[str], bytes],
        bos_token_id: int | None,
        eos_token_id: int | None,
        eos_token_ids: Iterable[int] = (),
        unk_token_id: int | None = None,
        pad_token_id: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        strip_leading_space: bool = False,
        manual_specials: bool = True,
        chat_template: str | None = None,
        chat_templates: Mapping[str, str] | None = None,
    ) -> None:
        self._backend = backend
        self._tokens = list(tokens)
        self._types = list(token_types)
        self._byte_decoder = byte_decoder
        self._manual_specials = manual_specials
        self.vocab_size: int = len(self._tokens)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.unk_token_id = unk_token_id
        self.pad_token_id = pad_token_id
        self.add_bos = add_bos and bos_token_id is not None
        self.add_eos = add_eos and eos_token_id is not None
        self._strip_leading_space = strip_leading_space
        self.bos_token = self._text_of(bos_token_id)
        self.eos_token = self._text_of(eos_token_id)
        self.unk_token = self._text_of(unk_token_id)
        self.pad_token = self._text_of(pad_token_id)

        eog = {i for i in eos_token_ids if 0 <= i < self.vocab_size}
        if eos_token_id is not None:
            eog.add(eos_token_id)
        by_text = {
            text: token_id
            for token_id, (text, kind) in enumerate(zip(self._tokens, self._types, strict=True))
            if text in _EOG_TEXTS and kind in _MATCHED_WHOLE
        }
        if "<|return|>" in by_text and "<|call|>" in by_text:
            # gpt-oss (harmony): '<|end|>' closes a message, not the reply (as llama.cpp)
            by_text.pop("<|end|>", None)
        eog.update(by_text.values())
        self.eos_token_ids: set[int] = eog

        self.chat_templates: dict[str, str] = dict(chat_templates or {})
        if chat_template is not None:
            self.chat_templates.setdefault("default", chat_template)
        self.chat_template: str | None = chat_template or self.chat_templates.get("default")
        self._compiled: dict[str, Any] = {}

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build the tokenizer a GGUF file describes (`GGUFFile(path).metadata`)."""
        model = str(metadata.get("tokenizer.ggml.model", ""))
        if model not in ("gpt2", "llama"):
            raise NotImplementedError(
                f"GGUF tokenizer model {model!r} is not supported (supported: 'gpt2' byte-level "
                "BPE and 'llama' sentencepiece BPE)"
            )
        raw_tokens = metadata.get("tokenizer.ggml.tokens")
        if not raw_tokens:
            raise ValueError("GGUF metadata has no tokenizer.ggml.tokens")
        # llama.cpp renames empty tokens so that every entry stays addressable.
        tokens = [str(t) if t else f"[EMPTY_{i}]" for i, t in enumerate(raw_tokens)]
        n = len(tokens)

        def special_id(key: str) -> int | None:
            value = metadata.get(f"tokenizer.ggml.{key}")
            if value is None:
                return None
            value = int(value)
            return value if 0 <= value < n else None

        bos_id = special_id("bos_token_id")
        eos_id = special_id("eos_token_id")
        unk_id = special_id("unknown_token_id")
        pad_id = special_id("padding_token_id")

        raw_types = metadata.get("tokenizer.ggml.token_type")
        if raw_types is not None and len(raw_types) >= n:
            types = [int(t) for t in raw_types[:n]]
        else:
            types = [TOKEN_NORMAL] * n
            for i in (bos_id, eos_id, pad_id):
                if i is not None:
                    types[i] = TOKEN_CONTROL
            if unk_id is not None:
                types[unk_id] = TOKEN_UNKNOWN

        vocab: dict[str, int] = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        merges_raw = metadata.get("tokenizer.ggml.merges")
        merges = [_split_merge(m) for m in merges_raw] if merges_raw else None

        pre = str(metadata.get("tokenizer.ggml.pre", "") or "")
        if model == "gpt2":
            if merges is None:
                raise ValueError("GGUF byte-level (gpt2) tokenizer has no tokenizer.ggml.merges")
            bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in _PRE_IGNORE_MERGES)
            backend = _HFTokenizer(bpe)
            backend.pre_tokenizer = _byte_level_pre_tokenizer(pre)
            backend.decoder = decoders.ByteLevel()
            add_bos_default = pre in _PRE_ADD_BOS
            strip = False
            byte_decoder: Callable[[str], bytes] = _byte_level_bytes
        else:  # sentencepiece ("llama")
            if merges is None:
                scores = metadata.get("tokenizer.ggml.scores") or [0.0] * n
                merges = _spm_merges(tokens, scores, types, vocab)
            unk = tokens[unk_id] if unk_id is not None else None
            bpe = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True,
                             byte_fallback=True)
            backend = _HFTokenizer(bpe)
            add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
            steps: list[normalizers.Normalizer] = []
            if add_prefix:
                steps.append(normalizers.Prepend(_SPM_SPACE))
            steps.append(normalizers.Replace(" ", _SPM_SPACE))
            backend.normalizer = normalizers.Sequence(steps)
            backend.decoder = decoders.Sequence(
                [decoders.Replace(_SPM_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
            )
            add_bos_default = True
            strip = add_prefix
            byte_decoder = _spm_bytes
            # byte tokens are decoded through their <0xNN> text, whatever their stored type
            for i, t in enumerate(tokens):
                if types[i] == TOKEN_NORMAL and _BYTE_TOKEN.match(t):
                    types[i] = TOKEN_BYTE

        _add_whole_tokens(backend, tokens, types)

        eos_ids = [
            i for i in (special_id("eot_token_id"), special_id("eom_token_id")) if i is not None
        ]
        templates = {
            key[len("tokenizer.chat_template."):]: str(value)
            for key, value in metadata.items()
            if key.startswith("tokenizer.chat_template.") and value
        }
        template = metadata.get("tokenizer.chat_template")
        return cls(
            backend,
            tokens=tokens,
            token_types=types,
            byte_decoder=byte_decoder,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            eos_token_ids=eos_ids,
            unk_token_id=unk_id,
            pad_token_id=pad_id,
            add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", add_bos_default)),
            add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
            strip_leading_space=strip,
            chat_template=str(template) if template else None,
            chat_templates=templates,
        )

    @classmethod
    def from_hf_folder(cls, folder: str | Path) -> Tokenizer:
        """Load `tokenizer.json` (+ tokenizer_config.json, generation_config.json, config.json,
        chat_template.jinja) from a local HuggingFace model folder."""
        folder = Path(folder)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{tokenizer_file} not found: only HuggingFace 'fast' tokenizers (tokenizer.json) "
                "are supported"
            )
        backend = _HFTokenizer.from_file(str(tokenizer_file))
        spec = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        config = _read_json(folder / "tokenizer_config.json")
        model_config = _read_json(folder / "config.json")
        generation_config = _read_json(folder / "generation_config.json")

        n = backend.get_vocab_size(with_added_tokens=True)
        added = backend.get_added_tokens_decoder()
        n = max([n, *(i + 1 for i in added)])
        tokens = [backend.id_to_token(i) or f"[EMPTY_{i}]" for i in range(n)]
        model_spec = spec.get("model") or {}
        decoder_kinds = _decoder_kinds(spec.get("decoder"))
        byte_fallback = bool(model_spec.get("byte_fallback"))
        strip = False
        if "ByteLevel" in decoder_kinds:
            byte_decoder: Callable[[str], bytes] = _byte_level_bytes
        elif decoder_kinds & {"Metaspace", "Replace", "ByteFallback"}:
            byte_decoder = _spm_bytes
            strip = _strips_leading_space(spec.get("decoder"))
        else:
            def byte_decoder(token: str) -> bytes:
                token_id = backend.token_to_id(token)
                if token_id is None:
                    return token.encode("utf-8")
                return backend.decode([token_id], skip_special_tokens=False).encode("utf-8")

        types = [TOKEN_NORMAL] * n
        if byte_decoder is _spm_bytes and byte_fallback:
            for i, t in enumerate(tokens):
                if _BYTE_TOKEN.match(t):
                    types[i] = TOKEN_BYTE
        for i, tok in added.items():
            types[i] = TOKEN_CONTROL if tok.special else TOKEN_USER_DEFINED

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

        template, templates = _hf_chat_templates(folder, config)
        # what tokenizer.json's post-processor adds (encode() lets it do the adding)
        probe = backend.encode("", add_special_tokens=True).ids
        add_bos = bool(probe) and bos_id is not None and probe[0] == bos_id
        add_eos = bool(probe) and eos_id is not None and probe[-1] == eos_id
        return cls(
            backend,
            tokens=tokens,
            token_types=types,
            byte_decoder=byte_decoder,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            eos_token_ids=config_eos,
            unk_token_id=unk_id,
            pad_token_id=pad_id,
            add_bos=add_bos,
            add_eos=add_eos,
            strip_leading_space=strip,
            # tokenizer.json's post-processor adds BOS/EOS itself
            manual_specials=False,
            chat_template=template,
            chat_templates=templates,
        )

    # ---- vocabulary -------------------------------------------------------------------------

    def _text_of(self, token_id: int | None) -> str | None:
        if token_id is None or not 0 <= token_id < self.vocab_size:
            return None
        return self._tokens[token_id]

    def id_to_token(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (byte-level / '▁' spelling)."""
        return self._tokens[token_id]

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def is_special(self, token_id: int) -> bool:
        """True for control/unknown/unused tokens (those `decode` skips by default)."""
        return 0 <= token_id < self.vocab_size and self._types[token_id] in _SILENT

    @cached_property
    def _piece_table(self) -> list[bytes]:
        """id -> raw bytes; b'' for special tokens."""
        table: list[bytes] = []
        decode = self._byte_decoder
        for text, kind in zip(self._tokens, self._types, strict=True):
            if kind in _SILENT:
                table.append(b"")
            elif kind == TOKEN_USER_DEFINED:
                table.append(text.encode("utf-8"))
            elif kind == TOKEN_BYTE:
                table.append(_spm_bytes(text))
            else:
                table.append(decode(text))
        return table

    @cached_property
    def _full_piece_table(self) -> list[bytes]:
        """id -> bytes, with special tokens written out as their text."""
        return [
            text.encode("utf-8") if kind in _SILENT else piece
            for text, kind, piece in zip(self._tokens, self._types, self._piece_table, strict=True)
        ]

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token `token_id` stands for (b'' for control/special tokens)."""
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} out of range (vocab size {self.vocab_size})")
        return self._piece_table[token_id]

    # ---- encode / decode --------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special tokens written in the text (e.g. '<|im_start|>') become
        their own id. With `add_special_tokens`, BOS (and EOS) are added when the model says so."""
        if not self._manual_specials:
            return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)
        ids = list(self._backend.encode(text, add_special_tokens=False).ids) if text else []
        if add_special_tokens:
            if self.add_bos and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            if self.add_eos and self.eos_token_id is not None:
                ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        table = self._piece_table if skip_special_tokens else self._full_piece_table
        n = self.vocab_size
        data = b"".join([table[i] if 0 <= i < n else b"" for i in ids])
        text = data.decode("utf-8", errors="replace")
        if self._strip_leading_space and text.startswith(" "):
            text = text[1:]
        return text

    # ---- chat -------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render the model's chat template (Jinja, sandboxed) to a prompt string."""
        template = self.chat_template
        if extra.get("tools") and "tool_use" in self.chat_templates:
            template = self.chat_templates["tool_use"]
        if not template:
            raise ValueError(
                "this model has no chat template (no tokenizer.chat_template in the GGUF / "
                "chat_template in tokenizer_config.json); send a raw prompt instead"
            )
        compiled = self._compiled.get(template)
        if compiled is None:
            try:
                compiled = _compile_template(template)
            except Exception as e:  # jinja2.TemplateSyntaxError and friends
                raise ValueError(f"invalid chat template: {e}") from e
            self._compiled[template] = compiled
        context: dict[str, Any] = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
            "tools": None,
            "documents": None,
        }
        context.update(extra)
        context["messages"] = messages
        context["add_generation_prompt"] = add_generation_prompt
        try:
            return str(compiled.render(**context))
        except _TemplateRaised as e:
            raise ValueError(str(e)) from e
        except Exception as e:
            raise ValueError(f"chat template failed: {type(e).__name__}: {e}") from e

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
                f"eos={self.eos_token!r})")


class IncrementalDetokenizer:
    """Turns generated ids into text one token at a time, never emitting half a character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._table = tokenizer._piece_table
        self._n = tokenizer.vocab_size
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = tokenizer._strip_leading_space

    def add(self, token_id: int) -> str:
        """The text this token completes ('' while a character is still incomplete, and for
        special tokens)."""
        piece = self._table[token_id] if 0 <= token_id < self._n else b""
        if not piece:
            return ""
        if self._strip:
            self._strip = False
            if piece[:1] == b" ":
                piece = piece[1:]
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """Whatever bytes are still buffered (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _split_merge(merge: str) -> tuple[str, str]:
    # As llama.cpp: the separator is the first space after the first character.
    pos = merge.find(" ", 1)
    if pos < 0:
        raise ValueError(f"malformed merge {merge!r} in tokenizer.ggml.merges")
    return merge[:pos], merge[pos + 1:]


def _add_whole_tokens(backend: _HFTokenizer, tokens: Sequence[str], types: Sequence[int]) -> None:
    """Control/unknown tokens become special added tokens and user-defined ones plain added
    tokens, so that both are matched whole in input text (llama.cpp does the same)."""
    special = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_UNKNOWN)
    ]
    user = [
        AddedToken(tokens[i], special=False, normalized=False)
        for i, t in enumerate(types) if t == TOKEN_USER_DEFINED
    ]
    if special:
        backend.add_special_tokens(special)
    if user:
        backend.add_tokens(user)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _decoder_kinds(spec: Any) -> set[str]:
    if not isinstance(spec, dict):
        return set()
    kinds = {str(spec.get("type"))}
    for child in spec.get("decoders") or ():
        kinds |= _decoder_kinds(child)
    return kinds


def _strips_leading_space(spec: Any) -> bool:
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


def _hf_chat_templates(
    folder: Path, config: Mapping[str, Any]
) -> tuple[str | None, dict[str, str]]:
    templates: dict[str, str] = {}
    raw = config.get("chat_template")
    if isinstance(raw, str):
        templates["default"] = raw
    elif isinstance(raw, list):
        for entry in raw:
            if isinstance(entry, dict) and entry.get("name") and entry.get("template"):
                templates[str(entry["name"])] = str(entry["template"])
    jinja_file = folder / "chat_template.jinja"
    if "default" not in templates and jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    json_file = folder / "chat_template.json"
    if "default" not in templates and json_file.is_file():
        value = _read_json(json_file).get("chat_template")
        if isinstance(value, str):
            templates["default"] = value
    extra_dir = folder / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates.setdefault(path.stem, path.read_text(encoding="utf-8"))
    return templates.get("default"), templates
