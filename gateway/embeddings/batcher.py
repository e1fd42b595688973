"""Embedder: `await embed(texts)` queues the texts, batches them by the window in
policies/batching.py, runs each batch on the model's own thread (the event loop never
waits on it) and hands each caller its rows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from gateway.embeddings.errors import EmbedderClosed, EmbeddingQueueFull
from gateway.embeddings.types import Embedded, Encoded, TextEncoder, Vectors
from policies.batching import BatchWindow

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class _Request:
    texts: list[str]
    out: Vectors  # (n, dim), filled batch by batch
    future: asyncio.Future[None]
    arrived: float
    taken: int = 0  # texts handed to batches (or given up: cancelled, failed)
    done: int = 0  # texts whose rows are in `out`
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class _Part:
    request: _Request
    start: int
    end: int


class Embedder:
    """Merges concurrent `embed` calls into model calls of up to max_batch texts.

    One runner task forms batches (BatchWindow: a text waits at most window_s once the
    model is idle) and awaits each model call (TextEncoder.submit: the model's thread)
    before forming the next, so texts that arrive during a call make up the next batch. A
    request larger than max_batch spans several batches, in arrival order. At most
    max_queue texts wait (EmbeddingQueueFull; a request larger than max_queue never fits).
    A caller that gives up (cancelled) leaves the batch it is in untouched. Counters for
    metrics: batches, batched_texts, batch_sizes (size -> batches), busy_s, queued."""

    def __init__(
        self,
        model: TextEncoder,
        *,
        window_s: float = 0.002,
        max_batch: int = 64,
        max_queue: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.model = model
        self.window = BatchWindow(window_s, max_batch)
        self.max_queue = max_queue
        self.batches = 0
        self.batched_texts = 0
        self.batch_sizes: Counter[int] = Counter()
        self.busy_s = 0.0  # time spent in model calls
        self._clock = clock
        self._queue: deque[_Request] = deque()
        self._queued = 0  # texts waiting for a batch
        self._pending: set[_Request] = set()  # waiting callers, queued or in a batch
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._call: Future[Encoded] | None = None  # the model call in flight
        self._idle_since = -math.inf  # when the last model call ended
        self._last_batch: int | None = None  # its size
        self._closed = False

    @property
    def queued(self) -> int:
        return self._queued

    async def start(self, warmup: bool = True) -> None:
        """Starts the runner; warmup: one model call first, so the first request does not
        pay the kernels' first-use setup."""
        if self._runner is not None or self._closed:
            raise RuntimeError("Embedder.start() may be called once")
        if warmup:
            await asyncio.wrap_future(self.model.submit(["warm-up"]))
        self._runner = asyncio.create_task(self._run(), name="embedder")
        self._runner.add_done_callback(self._runner_done)

    async def close(self) -> None:
        """Fails every waiting request with EmbedderClosed and waits for a model call in
        flight to end (its result is dropped). The model itself stays open (its owner
        closes it)."""
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._fail_pending(EmbedderClosed())
        call, self._call = self._call, None
        if call is not None:
            ended = asyncio.wrap_future(call)
            await asyncio.wait({ended})  # however it ends: its callers have their answer
            if not ended.cancelled():
                ended.exception()  # retrieved: a failure now has no one left to tell

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """(len(texts), dim) float32 unit vectors, row i for texts[i]."""
        return (await self.embed_counted(texts)).vectors

    async def embed_counted(self, texts: Sequence[str]) -> Embedded:
        if self._runner is None or self._closed:
            raise EmbedderClosed()
        n = len(texts)
        if n == 0:
            return Embedded(np.zeros((0, self.model.dim), np.float32), 0)
        if self._queued + n > self.max_queue:
            raise EmbeddingQueueFull(self._queued, self.max_queue)
        future = asyncio.get_running_loop().create_future()
        out = np.empty((n, self.model.dim), np.float32)
        request = _Request(list(texts), out, future, self._clock())
        was_empty = self._queued == 0
        self._queue.append(request)
        self._queued += n
        self._pending.add(request)
        # The runner only needs waking to open a window or to cut one short.
        full = self.window.max_batch
        if self._last_batch is not None:
            full = min(full, self._last_batch)
        if was_empty or self._queued >= full:
            self._wake.set()
        try:
            await future  # cancelling the caller cancels the future: the runner skips it
        finally:
            self._pending.discard(request)
            self._give_up(request)
        return Embedded(request.out, request.tokens)

    def _give_up(self, request: _Request) -> None:
        """Its texts not yet in a batch leave the queue (a no-op once all were taken)."""
        self._queued -= len(request.texts) - request.taken
        request.taken = len(request.texts)

    async def _run(self) -> None:
        queue = self._queue
        while True:
            while queue and queue[0].taken == len(queue[0].texts):
                queue.popleft()  # fully batched, cancelled or failed
            if not queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            decision = self.window.decide(
                queue[0].arrived,
                self._queued,
                self._clock(),
                idle_since=self._idle_since,
                expected=self._last_batch,
            )
            if not decision.flush:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(decision.wait_s):
                        await self._wake.wait()
                continue
            await self._run_batch(self._take())

    def _take(self) -> list[_Part]:
        room = self.window.take(self._queued)
        parts: list[_Part] = []
        for request in self._queue:
            if room == 0:
                break
            k = min(len(request.texts) - request.taken, room)
            if k > 0:
                parts.append(_Part(request, request.taken, request.taken + k))
                request.taken += k
                self._queued -= k
                room -= k
        return parts

    async def _run_batch(self, parts: list[_Part]) -> None:
        texts = [t for p in parts for t in p.request.texts[p.start : p.end]]
        began = self._clock()
        self._call = self.model.submit(texts)
        try:
            encoded = await asyncio.wrap_future(self._call)
        except Exception as exc:  # the model failed: each request in the batch hears why
            self._call = None
            for part in parts:
                self._fail(part.request, exc)
            return
        finally:  # cancelled (close): self._call stays, close() waits for the thread
            self._idle_since = self._clock()
            self._last_batch = len(texts)
            self.busy_s += self._idle_since - began
        self._call = None
        self.batches += 1
        self.batched_texts += len(texts)
        self.batch_sizes[len(texts)] += 1
        offset = 0
        for part in parts:
            n, request = part.end - part.start, part.request
            if not request.future.done():  # not cancelled, no earlier batch failed
                request.out[part.start : part.end] = encoded.vectors[offset : offset + n]
                request.tokens += sum(encoded.tokens[offset : offset + n])
                request.done += n
                if request.done == len(request.texts):
                    request.future.set_result(None)
            offset += n

    def _fail(self, request: _Request, exc: BaseException) -> None:
        if not request.future.done():
            request.future.set_exception(exc)
        self._give_up(request)  # its texts still queued go nowhere

    def _fail_pending(self, exc: BaseException) -> None:
        for request in list(self._pending):
            self._fail(request, exc)

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # a bug: fail the waiting callers rather than leave them hanging
            log.error("embedding runner stopped", exc_info=exc)
            self._closed = True
            self._fail_pending(EmbedderClosed())
