"""backend.tokenizer against transformers' own GGUF tokenizer (the reference), offline."""

# ruff: noqa: RUF001  (multilingual test text on purpose)

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.gguf_file import GGUFFile
from backend.tokenizer import IncrementalDetokenizer, Tokenizer

# Encoded identically by us, by llama.cpp and by transformers' GGUF tokenizer.
TEXTS = [
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "   three leading spaces",
    "trailing spaces   ",
    "don't I'll we've they're she'd it's",
    "DON'T I'LL",
    "numbers like 1234567 and 3.14 and -42",
    "1234567",
    "2024-01-15T10:30:00Z",
    "def fibonacci(n):\n    if n < 2:\n        return n\n"
    "    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "class Foo:\n\tdef bar(self):\n\t\tpass\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "line one\n\nline three\n\n\n\nline seven",
    "a\r\nb\rc",
    "multiple     spaces    between     words",
    "emoji: 😀🎉👍🏽 and 👨‍👩‍👧‍👦 family",
    "🤖",
    "日本語のテキストです。",
    "中文：你好，世界！",
    "한국어 텍스트",
    "Привет, мир!",
    "café naïve résumé façade Zürich",
    "ÀÉÎÕÜ àéîõü ßøå",
    "math: ∑ x² ≤ ∞, α+β=γ",
    "https://example.com/path?query=value&other=1#frag",
    "user@example.com",
    '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}',
    "<html><body><p>Hello</p></body></html>",
    "SELECT * FROM users WHERE id = 42;",
    "It's 5 o'clock... really?!",
    "\ttabbed\ttext\t",
    "a",
    "",
    " ",
    "\n",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|endoftext|>",
    "text<|im_end|>more text<|im_start|>",
]

# A run of whitespace before a digit: SmolLM2's tokenizer.json (and llama.cpp's 'smollm'
# pre-tokenizer) splits digits out first, so the whole run stays one piece; transformers' GGUF
# loader has no digit split for 'smollm' and cuts the run. Checked against the real SmolLM2
# pre-tokenizer instead.
DIGIT_AFTER_SPACES = [
    "x  +  1",
    "value:    42",
    "a\n 1",
    "indent\n    123\n",
    "  7 leading spaces before a digit",
]

MESSAGE_LISTS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Where is the treasure?"},
    ],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? 😀 日本語"},
    ],
]

@pytest.fixture(scope="module")
def metadata(smollm2_gguf: Path) -> dict[str, Any]:
    return GGUFFile(smollm2_gguf).metadata


@pytest.fixture(scope="module")
def tok(metadata: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(metadata)


def _load_reference(folder: Path, name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), gguf_file=name)


@pytest.fixture(scope="module")
def ref(smollm2_gguf: Path) -> Iterator[Any]:
    """transformers' tokenizer for the same GGUF, loaded offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield _load_reference(smollm2_gguf.parent, smollm2_gguf.name)


@pytest.fixture(scope="module")
def ref_smollm2_pre(ref: Any) -> Any:
    """The reference's vocabulary and merges with SmolLM2's own tokenizer.json pre-tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers

    backend = HFTokenizer.from_str(ref.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    return backend


# ---- encode / decode against the reference -------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_reference(tok: Tokenizer, ref: Any, text: str) -> None:
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS + DIGIT_AFTER_SPACES)
def test_encode_matches_smollm2_pretokenizer(tok: Tokenizer, ref_smollm2_pre: Any,
                                             text: str) -> None:
    assert tok.encode(text) == ref_smollm2_pre.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", TEXTS + DIGIT_AFTER_SPACES)
def test_decode_round_trips(tok: Tokenizer, ref: Any, text: str) -> None:
    ids = tok.encode(text)
    # special tokens written out, the text comes back exactly
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids, skip_special_tokens=False) == ref.decode(ids, skip_special_tokens=False)
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    if "<|" not in text:
        assert tok.decode(ids) == text


def test_special_tokens_are_single_ids(tok: Tokenizer) -> None:
    assert tok.encode("<|im_start|>") == [1]
    assert tok.encode("<|im_end|>") == [2]
    assert tok.encode("<|endoftext|>") == [0]
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(1) == 1 and ids.count(2) == 1
    assert tok.decode(ids) == "user\nhi"


def test_add_special_tokens_follows_gguf_flag(tok: Tokenizer, metadata: dict[str, Any]) -> None:
    assert metadata["tokenizer.ggml.add_bos_token"] is False
    assert tok.encode("Hello", add_special_tokens=True) == tok.encode("Hello")
    with_bos = Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.add_bos_token": True})
    assert with_bos.encode("Hello", add_special_tokens=True) == [1, *tok.encode("Hello")]
    assert with_bos.encode("Hello") == tok.encode("Hello")


def test_decode_tolerates_out_of_range_ids(tok: Tokenizer) -> None:
    assert tok.decode([19556, tok.vocab_size + 5, -1]) == "Hello"


# ---- special ids and attributes ------------------------------------------------------------


def test_special_token_attributes(tok: Tokenizer, ref: Any) -> None:
    assert tok.vocab_size == 49152
    assert tok.bos_token_id == 1
    assert tok.bos_token == ref.bos_token == "<|im_start|>"
    assert tok.eos_token == ref.eos_token == "<|im_end|>"
    # GGUF eos_token_id is 2 (<|im_end|>); <|endoftext|> also ends generation (as in llama.cpp)
    assert 2 in tok.eos_token_ids
    assert tok.eos_token_ids == {0, 2}
    assert tok.eos_token_id == 2


def test_eot_and_eom_ids_end_generation(metadata: dict[str, Any]) -> None:
    t = Tokenizer.from_gguf_metadata(
        {**metadata, "tokenizer.ggml.eot_token_id": 5, "tokenizer.ggml.eom_token_id": 6}
    )
    assert {0, 2, 5, 6} <= t.eos_token_ids


def test_token_bytes(tok: Tokenizer) -> None:
    assert tok.token_bytes(0) == b""  # <|endoftext|>, control
    assert tok.token_bytes(2) == b""  # <|im_end|>, control
    assert tok.token_bytes(tok.encode(" ")[0]) == b" "  # 'Ġ'
    assert tok.token_bytes(tok.encode("\n")[0]) == b"\n"  # 'Ċ'
    assert tok.token_bytes(19556) == b"Hello"
    # '😀' is split into byte tokens that are not valid UTF-8 alone
    pieces = [tok.token_bytes(i) for i in tok.encode("😀")]
    assert b"".join(pieces) == "😀".encode()
    assert len(pieces) > 1
    with pytest.raises(IndexError):
        tok.token_bytes(tok.vocab_size)
    # every token's bytes, joined, is what decode returns
    sample = list(range(17, tok.vocab_size, 997))
    joined = b"".join(tok.token_bytes(i) for i in sample).decode("utf-8", errors="replace")
    assert joined == tok.decode(sample)


# ---- incremental detokenization ------------------------------------------------------------


STREAM_TEXTS = [
    "emoji: 😀🎉👍🏽 and 👨‍👩‍👧‍👦 family",
    "日本語のテキストです。中文：你好，世界！",
    "mixed ascii, 한국어, Привет, café — and 🤖!",
    "<|im_start|>assistant\nSure! 😀<|im_end|>",
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_incremental_detokenizer_matches_decode(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add(i) for i in ids]
    tail = detok.flush()
    assert "".join(pieces) + tail == tok.decode(ids)
    assert tail == ""
    assert all("\ufffd" not in p for p in pieces)


def test_incremental_detokenizer_holds_partial_characters(tok: Tokenizer) -> None:
    ids = tok.encode("😀")
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tok)
    assert [detok.add(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert detok.add(ids[-1]) == "😀"
    assert detok.flush() == ""


def test_incremental_detokenizer_special_tokens_add_nothing(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(tok)
    assert detok.add(1) == ""
    assert detok.add(2) == ""
    assert detok.add(19556) == "Hello"


def test_incremental_detokenizer_flushes_incomplete_bytes(tok: Tokenizer) -> None:
    ids = tok.encode("😀")
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.add(i) for i in ids[:-1]) == ""
    assert detok.flush() == "\ufffd"
    assert tok.decode(ids[:-1]) == "\ufffd"


def test_incremental_detokenizer_random_ids_match_decode(tok: Tokenizer) -> None:
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.integers(0, tok.vocab_size, size=400)]
    # include lone byte tokens so that invalid UTF-8 shows up
    ids += tok.encode("😀")[:2] + tok.encode("abc") + tok.encode("日")[:1]
    detok = IncrementalDetokenizer(tok)
    out = "".join(detok.add(i) for i in ids) + detok.flush()
    assert out == tok.decode(ids)


# ---- chat template -------------------------------------------------------------------------


@pytest.mark.parametrize("messages", MESSAGE_LISTS)
def test_chat_template_matches_reference(tok: Tokenizer, ref: Any,
                                         messages: list[dict[str, Any]]) -> None:
    ours = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert ours == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.encode(ours) == ref.encode(ours, add_special_tokens=False)
    no_prompt = tok.apply_chat_template(messages, add_generation_prompt=False)
    assert no_prompt == ref.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=False)
    assert not no_prompt.endswith("<|im_start|>assistant\n")


def test_chat_template_default_system_prompt(tok: Tokenizer) -> None:
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_errors(metadata: dict[str, Any]) -> None:
    no_template = dict(metadata)
    del no_template["tokenizer.chat_template"]
    t = Tokenizer.from_gguf_metadata(no_template)
    assert t.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        t.apply_chat_template([{"role": "user", "content": "Hi"}])

    raising = Tokenizer.from_gguf_metadata(
        {
            **metadata,
            "tokenizer.chat_template": (
                "{% if messages[0]['role'] != 'user' %}"
                "{{ raise_exception('Conversation must start with a user message') }}"
                "{% endif %}{{ bos_token }}{{ messages[0]['content'] }}"
            ),
        }
    )
    with pytest.raises(ValueError, match="Conversation must start with a user message"):
        raising.apply_chat_template([{"role": "assistant", "content": "x"}])
    assert raising.apply_chat_template([{"role": "user", "content": "x"}]) == "<|im_start|>x"

    broken = Tokenizer.from_gguf_metadata({**metadata, "tokenizer.chat_template": "{% for %}"})
    with pytest.raises(ValueError, match="chat template"):
        broken.apply_chat_template([{"role": "user", "content": "x"}])

    # the sandbox refuses unsafe attribute access
    unsafe = Tokenizer.from_gguf_metadata(
        {**metadata, "tokenizer.chat_template": "{{ messages.__class__.__mro__ }}"}
    )
    with pytest.raises(ValueError):
        unsafe.apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_generation_tag(metadata: dict[str, Any]) -> None:
    t = Tokenizer.from_gguf_metadata(
        {
            **metadata,
            "tokenizer.chat_template": (
                "{% for m in messages %}{% if m['role'] == 'assistant' %}"
                "{% generation %}{{ m['content'] }}{% endgeneration %}"
                "{% else %}{{ m['content'] }}{% endif %}|{% endfor %}"
            ),
        }
    )
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert t.apply_chat_template(msgs) == "a|b|"


def test_chat_template_extras(metadata: dict[str, Any]) -> None:
    t = Tokenizer.from_gguf_metadata(
        {
            **metadata,
            "tokenizer.chat_template": (
                "{%- for m in messages %}\n"
                "  {{- m['role'] }}: {{ m['content'] }}\n"
                "{% endfor %}\n"
                "{%- if tools %}{{ tools | tojson }}{% endif %}"
                "{%- if add_generation_prompt %}assistant:{% endif %}"
                "{{ custom | default('') }}"
            ),
        }
    )
    msgs = [{"role": "user", "content": "hé"}]
    assert t.apply_chat_template(msgs) == "user: hé\nassistant:"
    assert t.apply_chat_template(msgs, add_generation_prompt=False, custom="!") == "user: hé\n!"
    tools = [{"type": "function", "function": {"name": "f", "description": "é"}}]
    assert '"description": "é"' in t.apply_chat_template(msgs, tools=tools)


# ---- pre-tokenizer selection ---------------------------------------------------------------


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
    from backend import tokenizer as module

    text = "Hello World 1234567 don't 日本語 😀  \n\t x==y; 3.14 <sentinel:1> IMGIMGAZ"
    with caplog.at_level(logging.WARNING, logger="backend.tokenizer"):
        for name in module._PRE_SPLITS:
            if not name:
                continue
            pieces = module._byte_level_pre_tokenizer(name).pre_tokenize_str(text)
            assert "".join(p for p, _ in pieces) == "".join(
                module._BYTE_TO_CHAR[b] for b in text.encode()
            ), name
    assert caplog.text == ""


def test_unknown_pre_tokenizer_falls_back_to_gpt2(metadata: dict[str, Any],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="backend.tokenizer"):
        t = Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.pre": "no-such-pre"})
    assert "no-such-pre" in caplog.text
    assert _pieces(t, "ab 1234") == ["ab", "Ġ1234"]
    assert t.encode("Hello world") == [19556, 905]


def test_unsupported_model_type(metadata: dict[str, Any]) -> None:
    with pytest.raises(NotImplementedError, match="'t5'"):
        Tokenizer.from_gguf_metadata({**metadata, "tokenizer.ggml.model": "t5"})


# ---- HF folder -----------------------------------------------------------------------------


def test_from_hf_folder_matches_gguf(tok: Tokenizer, ref: Any, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.save_pretrained(str(tmp_path))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2]}))
    hf = Tokenizer.from_hf_folder(tmp_path)
    assert hf.vocab_size == tok.vocab_size
    assert hf.bos_token_id == 1 and hf.eos_token_id == 2
    assert hf.eos_token_ids == tok.eos_token_ids
    assert hf.chat_template == tok.chat_template
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf.encode(text) == ids, text
        assert hf.decode(ids) == tok.decode(ids)
        assert hf.decode(ids, skip_special_tokens=False) == text
    for i in (0, 2, 216, 19556, *tok.encode("😀")):
        assert hf.token_bytes(i) == tok.token_bytes(i)
    msgs = MESSAGE_LISTS[1]
    assert hf.apply_chat_template(msgs) == tok.apply_chat_template(msgs)


def test_from_hf_folder_chat_template_in_config(ref: Any, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.save_pretrained(str(tmp_path))
    (tmp_path / "chat_template.jinja").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ eos_token }}{{ messages | length }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    hf = Tokenizer.from_hf_folder(tmp_path)
    assert hf.apply_chat_template([{"role": "user", "content": "x"}]) == "<|im_end|>1"


def test_from_hf_folder_bos_from_post_processor(ref: Any, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.save_pretrained(str(tmp_path))
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                            "tokens": ["<|im_start|>"]}},
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    hf = Tokenizer.from_hf_folder(tmp_path)
    assert hf.add_bos
    assert hf.encode("Hello world", add_special_tokens=True) == [1, 19556, 905]
    assert hf.encode("Hello world") == [19556, 905]


def test_from_hf_folder_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        Tokenizer.from_hf_folder(tmp_path)


# ---- sentencepiece ('llama') GGUF vocabulary -----------------------------------------------


def _write_spm_gguf(path: Path) -> None:
    """A small sentencepiece-style GGUF: BPE learned on a toy corpus, byte-fallback tokens."""
    import gguf
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    corpus = [
        "hello world, this is a small corpus for the sentencepiece test.",
        "The quick brown fox jumps over the lazy dog. Hello again world!",
        "tokenizers split words into pieces; pieces merge into tokens.",
        "numbers 12345 and 3.14 appear too, as do newlines\nand tabs\t.",
    ] * 20
    trainer_tok = HFTokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    trainer_tok.train_from_iterator(corpus, trainer)
    spec = json.loads(trainer_tok.to_str())["model"]
    merged = ["".join(m) for m in spec["merges"]]
    chars = [t for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])
             if t not in merged and t not in ("<unk>", "<s>", "</s>")]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *chars, *merged]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(chars) + len(merged))
    scores = ([0.0] * 259 + [-1000.0 - i for i in range(len(chars))]
              + [-float(i) for i in range(len(merged))])

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(1)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(True)
    writer.add_chat_template("{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    _write_spm_gguf(path)
    return path


SPM_TEXTS = [
    "hello world",
    "Hello again world!",
    "The quick brown fox jumps over the lazy dog.",
    "emoji 😀 and ünïcode",
    "numbers 12345\nnew\tline",
    "unseen words: zyxwv qqq",
    "x",
    "trailing  ",
]


def test_sentencepiece_gguf_matches_reference(spm_gguf: Path, tmp_path: Path) -> None:
    tok = Tokenizer.from_gguf_metadata(GGUFFile(spm_gguf).metadata)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        ref = _load_reference(spm_gguf.parent, spm_gguf.name)
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>"
    assert tok.eos_token_ids == {2}
    assert tok.add_bos
    for text in SPM_TEXTS:
        ids = tok.encode(text, add_special_tokens=True)
        assert ids == ref.encode(text), text
        assert ids[0] == 1
        assert tok.decode(ids) == text == ref.decode(ids, skip_special_tokens=True)
        detok = IncrementalDetokenizer(tok)
        assert "".join(detok.add(i) for i in ids) + detok.flush() == text
        assert tok.encode(text) == ids[1:]

    # the same vocabulary as a HuggingFace folder (Metaspace / byte-fallback decoder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.save_pretrained(str(tmp_path))
    hf = Tokenizer.from_hf_folder(tmp_path)
    assert hf.bos_token_id == 1 and hf.eos_token_id == 2 and hf.add_bos
    for text in SPM_TEXTS:
        ids = hf.encode(text, add_special_tokens=True)
        assert ids == tok.encode(text, add_special_tokens=True), text
        assert hf.decode(ids) == text
        assert [hf.token_bytes(i) for i in ids] == [tok.token_bytes(i) for i in ids]
        detok = IncrementalDetokenizer(hf)
        assert "".join(detok.add(i) for i in ids) + detok.flush() == text


def test_sentencepiece_gguf_llama_cpp_spacing(spm_gguf: Path) -> None:
    tok = Tokenizer.from_gguf_metadata(GGUFFile(spm_gguf).metadata)
    words = [tok.id_to_token(i) for i in tok.encode("hello world")]
    assert words == ["\u2581hello", "\u2581world"]
    # As llama.cpp: a space is prefixed to the text and to each piece that follows a special
    # token, and leading spaces are kept (transformers' GGUF loader uses Metaspace 'first').
    after_special = [tok.id_to_token(i) for i in tok.encode("hello</s>world")]
    assert after_special == ["\u2581hello", "</s>", "\u2581world"]
    assert [tok.id_to_token(i) for i in tok.encode("  x")] == ["\u2581"] * 3 + ["x"]
    assert tok.decode(tok.encode("  x")) == "  x"
    # byte fallback and token bytes
    emoji = tok.encode("😀")
    assert [tok.id_to_token(i) for i in emoji] == ["\u2581", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert [tok.token_bytes(i) for i in emoji] == [b" ", b"\xf0", b"\x9f", b"\x98", b"\x80"]
    assert tok.token_bytes(tok.token_to_id("<0x0A>") or -1) == b"\n"
    assert tok.token_bytes(tok.token_to_id("\u2581hello") or -1) == b" hello"
    assert tok.token_bytes(1) == b""
    detok = IncrementalDetokenizer(tok)
    assert [detok.add(i) for i in emoji] == ["", "", "", "", "😀"]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "[INST] hi [/INST]"


def test_gguf_without_token_types(metadata: dict[str, Any]) -> None:
    bare = {k: v for k, v in metadata.items() if k != "tokenizer.ggml.token_type"}
    t = Tokenizer.from_gguf_metadata(bare)
    # bos/eos/unk/pad still count as special tokens
    assert t.encode("<|im_start|>hi<|im_end|>")[0] == 1
    assert t.token_bytes(2) == b""
    assert 2 in t.eos_token_ids

