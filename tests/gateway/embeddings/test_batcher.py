"""The Embedder: concurrent callers share model calls and keep their rows apart; a full
queue, a closed embedder, a failing model and cancelled callers each end as they should
(the real model, and a gate the test answers by hand)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import pytest

from gateway.embeddings import Embedder, EmbedderClosed, EmbeddingModel, EmbeddingQueueFull, Encoded
from tests.gateway.embeddings.conftest import TEXTS, _close, _started

pytestmark = pytest.mark.anyio


async def test_concurrent_calls_share_one_model_call(model: EmbeddingModel) -> None:
    texts = [f"request number {i} about {TEXTS[i % len(TEXTS)]}" for i in range(32)]
    solo = np.concatenate([model.encode([t]) for t in texts])
    # A wide window: all 32 arrive within it however slow this machine is right now, and
    # the 32nd fills the batch.
    embedder = await _started(model, window_s=5.0, max_batch=32)
    try:
        results = await asyncio.gather(*(embedder.embed([t]) for t in texts))
        assert embedder.batches == 1 and embedder.batch_sizes == {32: 1}
        assert embedder.batched_texts == 32 and embedder.queued == 0
        for i, vectors in enumerate(results):
            assert vectors.shape == (1, 384)
            _close(vectors, solo[i : i + 1])
    finally:
        await embedder.close()


async def test_a_request_larger_than_max_batch_spans_batches(model: EmbeddingModel) -> None:
    texts = [f"sentence {i}" for i in range(20)]
    embedder = await _started(model, window_s=0.0, max_batch=8)
    try:
        result = await embedder.embed_counted(texts)
        assert embedder.batch_sizes == {8: 2, 4: 1}
        _close(result.vectors, model.encode(texts))
        assert result.tokens == sum(model.count_tokens(texts))
    finally:
        await embedder.close()


async def test_a_full_queue_refuses_and_close_fails_waiting_requests(
    model: EmbeddingModel,
) -> None:
    embedder = await _started(model, window_s=60.0, max_batch=64, max_queue=4)
    waiting = asyncio.ensure_future(embedder.embed(["a", "b", "c"]))
    await asyncio.sleep(0)  # let it queue (the window keeps it there)
    with pytest.raises(EmbeddingQueueFull) as refused:
        await embedder.embed(["d", "e"])
    assert refused.value.status_code == 503 and refused.value.code == "queue_full"
    assert embedder.queued == 3
    await embedder.close()
    with pytest.raises(EmbedderClosed):
        await waiting
    with pytest.raises(EmbedderClosed):
        await embedder.embed(["after close"])


async def test_not_started_refuses(model: EmbeddingModel) -> None:
    with pytest.raises(EmbedderClosed):
        await Embedder(model).embed(["x"])


@dataclass
class FailsOnce:
    """The real model, except that its first call fails."""

    model: EmbeddingModel
    failed: bool = False

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def dim(self) -> int:
        return self.model.dim

    def submit(self, texts: list[str]) -> Future[Encoded]:
        if self.failed:
            return self.model.submit(texts)
        self.failed = True
        future: Future[Encoded] = Future()
        future.set_exception(RuntimeError("model crashed"))
        return future


async def test_a_model_failure_reaches_every_request_in_the_batch(model: EmbeddingModel) -> None:
    embedder = await _started(FailsOnce(model), window_s=5.0, max_batch=3)
    try:
        results = await asyncio.gather(
            *(embedder.embed([t]) for t in TEXTS[:3]), return_exceptions=True
        )
        assert [str(r) for r in results] == ["model crashed"] * 3
        assert embedder.queued == 0
        _close(await embedder.embed(TEXTS[:3]), model.encode(TEXTS[:3]))  # still serving
    finally:
        await embedder.close()


@dataclass
class Gate:
    """A model that answers when the test says so; vectors say which text they are for."""

    name: str = "gate"
    dim: int = 2
    calls: list[list[str]] = field(default_factory=list)
    futures: list[Future[Encoded]] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)

    def submit(self, texts: list[str]) -> Future[Encoded]:
        future: Future[Encoded] = Future()
        future.set_running_or_notify_cancel()  # running, as on a model thread
        self.calls.append(texts)
        self.futures.append(future)
        self.called.set()
        return future

    async def next_call(self) -> list[str]:
        await self.called.wait()
        self.called.clear()
        return self.calls[-1]

    def answer(self, call: int) -> None:
        rows = [[float(ord(t[0])), float(call)] for t in self.calls[call]]
        self.futures[call].set_result(Encoded(np.array(rows, np.float32), [1] * len(rows)))


async def test_cancelling_one_caller_leaves_its_batch_to_the_others() -> None:
    gate = Gate()
    embedder = await _started(gate, window_s=0.0)
    try:
        first = asyncio.ensure_future(embedder.embed(["a"]))
        assert await gate.next_call() == ["a"]  # in flight
        b = asyncio.ensure_future(embedder.embed(["b"]))
        c = asyncio.ensure_future(embedder.embed(["c"]))
        d = asyncio.ensure_future(embedder.embed(["d"]))
        await asyncio.sleep(0)  # b, c and d queue behind the call in flight
        assert embedder.queued == 3
        c.cancel()  # waiting in the queue: its text never reaches the model
        first.cancel()  # in flight: the call goes on, its row is dropped
        await asyncio.sleep(0)
        assert embedder.queued == 2
        gate.answer(0)
        assert await gate.next_call() == ["b", "d"]
        gate.answer(1)
        assert (await b).tolist() == [[ord("b"), 1]]
        assert (await d).tolist() == [[ord("d"), 1]]
        assert first.cancelled() and c.cancelled()
    finally:
        await embedder.close()


async def test_close_fails_the_request_in_flight_and_waits_for_the_model() -> None:
    gate = Gate()
    embedder = await _started(gate, window_s=0.0)
    waiting = asyncio.ensure_future(embedder.embed(["a"]))
    await gate.next_call()
    closing = asyncio.ensure_future(embedder.close())
    with pytest.raises(EmbedderClosed):
        await waiting
    assert not closing.done()  # the model call is still running
    gate.answer(0)
    await closing
