"""One generation request as the engine tracks it, and the deltas it streams back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import llguidance
import torch

from backend.prompt_scores import TokenScore
from backend.sampling_params import SamplingParams
from backend.sequence import Sequence
from backend.speculative import AcceptanceTracker, NgramIndex
from backend.tokenizer import IncrementalDetokenizer
from backend.tokenizer.stop_strings import StopStringMatcher

if TYPE_CHECKING:
    from backend.engine import Engine


@dataclass(frozen=True, slots=True)
class Delta:
    """New output of one request since its previous delta."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None  # None while running; "stop", "length" or "abort" at the end
    prompt_tokens: int
    completion_tokens: int
    # With SamplingParams.logprobs set: per token in token_ids, its logprob and the
    # requested number of best alternatives (token id, logprob), best first.
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    # Speculative decoding so far (cumulative, like completion_tokens): guesses that
    # were accepted into the output / fed to the model and thrown away.
    accepted_draft_tokens: int = 0
    rejected_draft_tokens: int = 0
    # Prompt tokens whose KV came from the prefix cache rather than being computed.
    cached_tokens: int = 0
    # With SamplingParams.prompt_logprobs, in the request's first delta: the scores of
    # prompt tokens 1.. (each given the ones before it; token 0 has none).
    prompt_logprobs: list[TokenScore] | None = None


@dataclass(slots=True)
class SpecState:
    """A speculating request's acceptance history and lookup index."""

    tracker: AcceptanceTracker
    ngram: NgramIndex | None = None
    run: int = 0  # the current guesses' Proposal.run, for recording what was kept
    accepted: int = 0  # guesses kept, over the whole request
    rejected: int = 0  # guesses thrown away


@dataclass(slots=True)
class Request:
    request_id: str
    seq: Sequence  # tokens and KV blocks, as the scheduler sees them
    params: SamplingParams
    max_tokens: int  # resolved: params.max_tokens or what the context leaves
    detokenizer: IncrementalDetokenizer
    stop_matcher: StopStringMatcher
    generator: torch.Generator | None
    arrival_time: float  # time.monotonic() at add_request
    last_token_time: float | None = None
    scheduled_time: float | None = None  # the first step that worked on it (queue time)
    first_token_time: float | None = None  # prefill time = this - scheduled_time
    spec: SpecState | None = None  # set when this request speculates
    grammar: llguidance.LLMatcher | None = None  # set when its answer follows a grammar
    closing: bool = False  # its JSON is being closed as its budget ends (structured/)
    # With params.prompt_logprobs: scores of prompt tokens 1.. as prefill chunks compute
    # them; None once sent (in the first delta).
    prompt_scores: list[TokenScore] | None = None

    def keep_prompt_scores(self, first: int, scores: list[TokenScore]) -> None:
        """Appends the prompt scores a step computed from position `first` on. After a
        preemption the prompt is recomputed: rows already scored are skipped."""
        kept = self.prompt_scores
        if kept is not None and first <= len(kept):
            kept += scores[len(kept) - first :]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.seq.token_ids[: self.seq.num_prompt_tokens]

    @property
    def output_token_ids(self) -> list[int]:
        return self.seq.token_ids[self.seq.num_prompt_tokens :]


class RequestStream:
    """Async iterator over a request's deltas; `abort()` stops the request early.

    Merely leaving the `async for` does not stop generation: callers that may stop
    reading (a client going away) call `abort()` in a `finally`.
    """

    def __init__(
        self, engine: Engine, request_id: str, seq: Sequence, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.request_id = request_id
        self.seq = seq  # read-only outside the engine thread
        self._engine = engine
        self._loop = loop
        self._queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        self._done = False

    # Called from the engine thread.
    def put(self, item: Delta | BaseException) -> None:
        # RuntimeError: the consumer's event loop is gone, so nobody is listening.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self

    async def __anext__(self) -> Delta:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item.finish_reason is not None:
            self._done = True
        return item

    def abort(self) -> None:
        """Stops generation and frees the request's memory; harmless once finished."""
        if not self._done:
            self._done = True
            self._engine.abort(self.request_id)
