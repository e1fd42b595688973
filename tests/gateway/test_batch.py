"""Frames of one upstream burst leave the edge in one write; others at once; [DONE] with
the end of the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.batch import current_batch
from gateway.http.edge import _pump
from gateway.payload import Chunk
from gateway.sse import encode_sse

pytestmark = pytest.mark.anyio


async def _source(log: list[str]) -> AsyncIterator[Chunk]:
    """Two events read together (one burst), then one alone, as HttpUpstream marks them."""
    batch = current_batch()
    assert batch is not None  # the edge set it for this task
    batch.hold()
    yield Chunk.of({"n": 1})
    yield Chunk.of({"n": 2})
    log.append("waiting for the next read")
    await batch.release()
    yield Chunk.of({"n": 3})


async def test_a_burst_is_one_write_and_done_ends_the_answer() -> None:
    log: list[str] = []
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        log.append("write")
        sent.append(message)

    await _pump(encode_sse(_source(log)), send)  # type: ignore[arg-type]
    bodies = [m["body"] for m in sent]
    assert bodies == [
        b'data: {"n":1}\n\ndata: {"n":2}\n\n',
        b'data: {"n":3}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert [m.get("more_body", False) for m in sent] == [True, True, False]
    # The burst went out before the reader waited for more: nothing held across a wait.
    assert log == ["waiting for the next read", "write", "write", "write"]
