"""llama.cpp's pre-tokenizers: `tokenizer.ggml.pre` name -> how byte-level BPE text is split.

A byte-level (GPT-2 style) vocabulary is only half of a tokenizer: before merges run, the text is
cut into pieces by a list of regexes, and the token ids depend on exactly where those cuts fall.
GGUF files name the scheme (`tokenizer.ggml.pre`); this module maps the name to the splits.
Sentencepiece ('llama') vocabularies split nothing; their text is only space-escaped
(`spm_normalizer`).
"""

# The regexes below are llama.cpp's pre-tokenizer definitions (src/llama-vocab.cpp,
# llm_tokenizer_bpe), copied as data: they must match upstream byte for byte, or token ids stop
# agreeing with llama.cpp and transformers. Do not "tidy" them. Where llama.cpp rewrote a pattern
# for std::regex, the upstream tokenizer.json form is used. Each regex is applied in turn, keeping
# both the matches and the text between them ("isolated"), then the pieces are byte-level encoded.

from __future__ import annotations

import logging
from collections.abc import Iterable

from tokenizers import Regex, normalizers, pre_tokenizers

from backend.tokenizer.token_pieces import SPM_SPACE

logger = logging.getLogger(__name__)

__all__ = [
    "PRE_ADD_BOS",
    "PRE_IGNORE_MERGES",
    "PRE_SPLITS",
    "byte_level_pre_tokenizer",
    "spm_normalizer",
]

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
PRE_SPLITS: dict[str, tuple[str, ...]] = {}
# names whose BPE model skips merging a piece that is already a whole token (llama.cpp's
# ignore_merges)
PRE_IGNORE_MERGES: set[str] = set()
# names whose vocabularies add BOS unless the file says otherwise (tokenizer.ggml.add_bos_token)
PRE_ADD_BOS: set[str] = set()


def _register(
    names: Iterable[str],
    regexes: tuple[str, ...],
    *,
    ignore_merges: bool = False,
    add_bos: bool = False,
) -> None:
    for name in names:
        PRE_SPLITS[name] = regexes
        if ignore_merges:
            PRE_IGNORE_MERGES.add(name)
        if add_bos:
            PRE_ADD_BOS.add(name)


# The table is llama.cpp's, kept in its compact layout (one call per group of names).
# fmt: off
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
# fmt: on


def byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre` = `pre`: its split regexes in
    order, then byte-level encoding. Unknown names fall back to GPT-2's regex (with a warning)."""
    if not pre:
        logger.warning(
            "GGUF file names no pre-tokenizer (tokenizer.ggml.pre): using llama.cpp's "
            "'default' split regexes"
        )
    splits = PRE_SPLITS.get(pre)
    if splits is None:
        logger.warning(
            "unknown GGUF pre-tokenizer %r: falling back to the GPT-2 split regex; "
            "tokenization may differ from the model's own tokenizer",
            pre,
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


def spm_normalizer(add_space_prefix: bool) -> normalizers.Normalizer:
    """llama.cpp's input handling for sentencepiece ('llama') vocabularies: spaces become '▁',
    and one is put before the text when the file says so (`tokenizer.ggml.add_space_prefix`)."""
    steps: list[normalizers.Normalizer] = []
    if add_space_prefix:
        steps.append(normalizers.Prepend(SPM_SPACE))
    steps.append(normalizers.Replace(" ", SPM_SPACE))
    return normalizers.Sequence(steps)
