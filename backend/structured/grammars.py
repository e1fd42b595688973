"""GrammarSpecs compiled with llguidance for one model's tokenizer, and a matcher per
request. Thread-safe: the gateway compiles on a worker thread (so a bad spec is a 400
before the request is queued), the engine takes matchers from the cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import llguidance as llg

from backend.structured.spec import GrammarError, GrammarSpec
from backend.tokenizer import Tokenizer

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # a TypedDict the package does not export

# Compiled grammars kept (a template matcher each, a few hundred KB at most): schemas
# repeat across an application's requests, and a compile costs 1-10 ms.
CACHE_SIZE = 256
# JSON without optional whitespace: a free choice of whitespace lets a small model pad
# its answer with newlines until it runs out of tokens (measured with both libraries).
JSON_OVERRIDES: JsonCompileOptions = {"whitespace_flexible": False}


class Grammars:
    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        """vocab_size: the width of the model's logits (may exceed the tokenizer's)."""
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._lock = threading.Lock()
        self._lltok: llg.LLTokenizer | None = None  # built on first use (~0.2 s)
        self._cache: OrderedDict[GrammarSpec, llg.LLMatcher] = OrderedDict()

    def compile(self, spec: GrammarSpec) -> llg.LLMatcher:
        """The spec's compiled template (cached); GrammarError names what is wrong."""
        with self._lock:
            template = self._cache.get(spec)
            if template is not None:
                self._cache.move_to_end(spec)
                return template
            lltok = self._llg_tokenizer()
        try:
            template = llg.LLMatcher(lltok, _grammar_text(spec), log_level=0)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise GrammarError(str(exc)) from exc
        if template.is_error():
            raise GrammarError(template.get_error())
        with self._lock:
            self._cache[spec] = template
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return template

    def matcher(self, spec: GrammarSpec) -> llg.LLMatcher:
        """A fresh matcher for one request (a copy of the template: ~1 us)."""
        return self.compile(spec).deep_copy()

    def _llg_tokenizer(self) -> llg.LLTokenizer:
        if self._lltok is None:
            vocab = _LlgVocabulary(self._tokenizer, self.vocab_size)
            self._lltok = llg.LLTokenizer(
                llg.TokenizerWrapper(vocab), eos_token=sorted(self._tokenizer.eos_token_ids)
            )
        return self._lltok


def _grammar_text(spec: GrammarSpec) -> str:
    """llguidance's grammar for the spec; its errors become GrammarError."""
    try:
        if spec.kind == "json_schema":
            return str(
                llg.LLMatcher.grammar_from_json_schema(spec.source, overrides=JSON_OVERRIDES)
            )
        if spec.kind == "regex":
            return str(llg.LLMatcher.grammar_from_regex(spec.source))
        return str(llg.grammar_from(spec.kind, spec.source))  # choice, grammar
    except (ValueError, TypeError, RuntimeError) as exc:
        raise GrammarError(str(exc)) from exc


class _LlgVocabulary:
    """Our tokenizer as llguidance.TokenizerWrapper reads one: each token's bytes, a
    special token as b"\\xff" + its name (llguidance's convention: never text, so no
    grammar can produce one; end-of-sequence ids are given separately), padded with
    empty tokens to the logits' width."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        n = tokenizer.vocab_size
        self.special_token_ids = [i for i in range(n) if tokenizer.is_special(i)]
        special = set(self.special_token_ids)
        self.tokens = [
            b"\xff" + tokenizer.id_to_token(i).encode()
            if i in special
            else tokenizer.token_bytes(i)
            for i in range(n)
        ] + [b""] * max(0, vocab_size - n)
        self.eos_token_id = min(tokenizer.eos_token_ids)
        self.bos_token_id = tokenizer.bos_token_id

    def __call__(self, text: Any) -> list[int]:
        """Tokenizes text (llguidance re-tokenizes forced strings with it)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._tokenizer.encode(str(text))
