"""Engine logprobs -> OpenAI's two logprob shapes (chat `content` list, legacy completions)
and vLLM's `prompt_logprobs`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backend.prompt_scores import TokenScore
from backend.tokenizer import Tokenizer
from gateway.schemas import (
    CompletionLogprobs,
    PromptLogprob,
    PromptLogprobs,
    TokenLogprob,
    TopLogprob,
)

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

    def echoed(
        self, prompt: Sequence[int], scores: Sequence[TokenScore], k: int
    ) -> CompletionLogprobs:
        """An echoed prompt's tokens in legacy completions' shape: the first token has no
        log-probability (None); each other's `top_logprobs` holds the k best and the
        token itself (up to k + 1, as OpenAI's legacy API). Offsets start at 0."""
        texts = [self.token(t)[0] for t in prompt]
        tops: list[dict[str, float] | None] = [None]
        for tid, score in zip(prompt[1:], scores, strict=True):
            top = {self.token(t)[0]: lp for t, lp in score.top[:k]} if k else {}
            if k:
                top.setdefault(self.token(tid)[0], score.logprob)
            tops.append(top)
        offsets, offset = [], 0
        for tid in prompt:
            offsets.append(offset)
            # The token's own bytes: what it adds to the prompt's text (a special token
            # adds none).
            offset += len(self.tokenizer.token_bytes(tid).decode("utf-8", errors="replace"))
        return CompletionLogprobs(
            tokens=texts,
            token_logprobs=[None, *(s.logprob for s in scores)],
            top_logprobs=tops,
            text_offset=offsets,
        )

    def prompt(self, prompt: Sequence[int], scores: Sequence[TokenScore], k: int) -> PromptLogprobs:
        """vLLM's prompt_logprobs: per token after the first, the token and the k best,
        by token id."""
        out: PromptLogprobs = [None]
        for tid, score in zip(prompt[1:], scores, strict=True):
            entry = {
                str(t): PromptLogprob(logprob=lp, rank=rank, decoded_token=self.token(t)[0])
                for rank, (t, lp) in enumerate(score.top[:k], start=1)
            }
            entry[str(tid)] = PromptLogprob(
                logprob=score.logprob, rank=score.rank, decoded_token=self.token(tid)[0]
            )
            out.append(entry)
        return out


def joined(first: CompletionLogprobs, then: CompletionLogprobs) -> CompletionLogprobs:
    """An echoed prompt's logprobs followed by the completion's."""
    return CompletionLogprobs(
        tokens=first.tokens + then.tokens,
        token_logprobs=first.token_logprobs + then.token_logprobs,
        top_logprobs=(first.top_logprobs or []) + (then.top_logprobs or []),
        text_offset=first.text_offset + then.text_offset,
    )


@dataclass(frozen=True, slots=True)
class Echo:
    """What a legacy completion echoes per prompt: its text, and with `logprobs` (k) its
    tokens' log-probabilities."""

    formatter: LogprobFormatter
    prompts: list[list[int]]
    texts: list[str]  # "" where echo is off
    k: int | None

    def logprobs(
        self, p: int, scores: list[TokenScore], then: CompletionLogprobs | None
    ) -> CompletionLogprobs | None:
        """Prompt p's echoed logprobs, followed by `then` (the completion's)."""
        if self.k is None or not self.texts[p]:
            return then
        echoed = self.formatter.echoed(self.prompts[p], scores, self.k)
        return echoed if then is None else joined(echoed, then)
