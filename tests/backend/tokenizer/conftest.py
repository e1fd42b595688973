"""Tokenizer fixtures shared by test_tokenizer.py, test_pretokenizers.py and test_chat_template.py:
SmolLM2's GGUF metadata and tokenizer, transformers' own GGUF tokenizer as the reference (loaded
offline), and a small sentencepiece GGUF built on the fly. Session-scoped: each is built once."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.loading.gguf_file import GGUFFile
from backend.tokenizer import Tokenizer


def _load_reference(gguf_path: Path) -> Any:
    """transformers' tokenizer for a GGUF file, loaded offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


@pytest.fixture(scope="session")
def load_reference() -> Callable[[Path], Any]:
    """Loads transformers' tokenizer for a GGUF path (offline)."""
    return _load_reference


@pytest.fixture(scope="session")
def metadata(smollm2_gguf: Path) -> dict[str, Any]:
    return GGUFFile(smollm2_gguf).metadata


@pytest.fixture(scope="session")
def tok(metadata: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(metadata)


@pytest.fixture(scope="session")
def ref(smollm2_gguf: Path) -> Any:
    """transformers' tokenizer for the same GGUF, loaded offline."""
    return _load_reference(smollm2_gguf)


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
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    trainer_tok.train_from_iterator(corpus, trainer)
    spec = json.loads(trainer_tok.to_str())["model"]
    merged = ["".join(m) for m in spec["merges"]]
    chars = [
        t
        for t, _ in sorted(spec["vocab"].items(), key=lambda kv: kv[1])
        if t not in merged and t not in ("<unk>", "<s>", "</s>")
    ]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *chars, *merged]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(chars) + len(merged))
    scores = (
        [0.0] * 259
        + [-1000.0 - i for i in range(len(chars))]
        + [-float(i) for i in range(len(merged))]
    )

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


@pytest.fixture(scope="session")
def spm_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spm") / "spm.gguf"
    _write_spm_gguf(path)
    return path
