"""Generated ids to streamed text, one token at a time."""

from __future__ import annotations

import codecs

from backend.tokenizer.tokenizer import Tokenizer


class IncrementalDetokenizer:
    """Turns generated ids into text one token at a time, never emitting half a character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._table = tokenizer.piece_table
        self._n = tokenizer.vocab_size
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = tokenizer.strips_leading_space

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
