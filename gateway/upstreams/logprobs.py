"""Engine logprobs -> OpenAI's two logprob shapes (chat `content` list, legacy completions)."""

from __future__ import annotations

from collections.abc import Sequence

from backend.tokenizer import Tokenizer
from gateway.schemas import CompletionLogprobs, TokenLogprob, TopLogprob

TopList = list[tuple[int, float]]


class LogprobFormatter:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def token(self, token_id: int) -> tuple[str, list[int]]:
        """The token's text and UTF-8 bytes (special tokens by their name)."""
        raw = self.tokenizer.token_bytes(token_id)
        if not raw and self.tokenizer.is_special(token_id):
            raw = self.tokenizer.id_to_token(token_id).encode()
        return raw.decode("utf-8", errors="replace"), list(raw)

    def chat(
        self, token_ids: Sequence[int], logprobs: Sequence[float], tops: Sequence[TopList]
    ) -> list[TokenLogprob]:
        entries = []
        for tid, lp, top in zip(token_ids, logprobs, tops, strict=True):
            text, raw = self.token(tid)
            alternatives = []
            for alt_id, alt_lp in top:
                alt_text, alt_raw = self.token(alt_id)
                alternatives.append(TopLogprob(token=alt_text, logprob=alt_lp, bytes=alt_raw))
            entries.append(
                TokenLogprob(token=text, logprob=lp, bytes=raw, top_logprobs=alternatives)
            )
        return entries

    def completion(
        self,
        token_ids: Sequence[int],
        logprobs: Sequence[float],
        tops: Sequence[TopList],
        offset: int,
    ) -> CompletionLogprobs:
        """`offset`: where the first token's text starts in the choice's text."""
        texts = [self.token(t)[0] for t in token_ids]
        offsets = []
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        return CompletionLogprobs(
            tokens=texts,
            token_logprobs=list(logprobs),
            top_logprobs=[{self.token(t)[0]: lp for t, lp in top} for top in tops],
            text_offset=offsets,
        )
