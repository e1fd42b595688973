"""Embeddings with the real all-MiniLM-L6-v2: the model agrees with sentence-transformers,
the Embedder batches concurrent callers and keeps their rows apart, and POST
/v1/embeddings answers in OpenAI's shape (through the gateway's HTTP edge in process, and
the official SDK against a real uvicorn server)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import uvicorn

from gateway.auth import Authenticator
from gateway.embeddings import (
    DEFAULT_MODEL,
    Embedder,
    EmbedderClosed,
    EmbeddingModel,
    EmbeddingQueueFull,
    Encoded,
    default_model_path,
)
from gateway.embeddings_route import MAX_INPUTS
from gateway.http import Edge, create_app
from gateway.runtime import Gateway

pytestmark = pytest.mark.anyio

TEXTS = [
    "How do I reset my password?",
    "What is the capital of France?",
    "a",
    "  leading and trailing spaces  ",
    "Ünïcödé, 日本語 and emoji 🙂 in one line",
    "embeddings " * 300,  # past max_seq_length (256 tokens): truncated
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def model() -> Iterator[EmbeddingModel]:
    m = EmbeddingModel()
    yield m
    m.close()


def _reference(model: EmbeddingModel, texts: list[str]) -> np.ndarray:
    """sentence-transformers' own encode, on the model's thread."""
    out = model.run(model.st.encode, texts, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    """Row by row: cosine >= 0.9999 and equal to 1e-5."""
    cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.9999
    np.testing.assert_allclose(a, b, atol=1e-5)


# ---- the model ---------------------------------------------------------------------------


def test_vectors_equal_sentence_transformers_encode(model: EmbeddingModel) -> None:
    assert (model.name, model.dim, model.max_seq_length) == (DEFAULT_MODEL, 384, 256)
    vectors = model.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    _close(vectors, _reference(model, TEXTS))
    _close(np.concatenate([model.encode([t]) for t in TEXTS]), vectors)  # batch = solo


def test_token_counts_are_what_the_model_saw(model: EmbeddingModel) -> None:
    counts = model.count_tokens(["a", "hello world", "embeddings " * 300])
    assert counts == [3, 4, 256]  # [CLS] ... [SEP]; the long one truncated
    assert model.encode_counted(["a", "hello world"]).tokens == [3, 4]
    assert model.encode([]).shape == (0, 384)


def test_other_pooling_falls_back_to_sentence_transformers(tmp_path: Path) -> None:
    """A folder whose pipeline the packed path does not match (CLS pooling here) still
    gives sentence-transformers' vectors, normalized."""
    folder = tmp_path / "cls-model"
    shutil.copytree(default_model_path(), folder)
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))
    cls_model = EmbeddingModel(folder)
    try:
        assert cls_model.name == "cls-model"
        got = cls_model.encode(TEXTS[:3])
        ref = _reference(cls_model, TEXTS[:3])
        _close(got, ref / np.linalg.norm(ref, axis=1, keepdims=True))
    finally:
        cls_model.close()


# ---- the Embedder -------------------------------------------------------------------------


async def _started(model: Any, **kwargs: Any) -> Embedder:
    embedder = Embedder(model, **kwargs)
    await embedder.start(warmup=False)
    return embedder


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


# ---- POST /v1/embeddings -------------------------------------------------------------------


def _app(
    model: EmbeddingModel | None,
    keys: dict[str, str] | None = None,
    names: tuple[str, ...] = (DEFAULT_MODEL,),
    **kw: Any,
) -> Edge:
    """A gateway serving only the local embedding model; the Embedder starts on first
    use, on the loop of whoever serves the app."""
    factory = None
    if model is not None:

        async def factory() -> Embedder:
            return await _started(model, **kw)

    gw = Gateway(
        {},
        auth=Authenticator(keys or {}),
        embedder_factory=factory,
        embedder_names=frozenset(names),
    )
    return create_app(gw)


@asynccontextmanager
async def _client(app: Edge) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        try:
            yield c
        finally:  # the Embedder only: the model is the module's
            if app.gateway.embedder is not None:
                await app.gateway.embedder.close()


@pytest.fixture
async def client(model: EmbeddingModel) -> AsyncIterator[httpx.AsyncClient]:
    names = (DEFAULT_MODEL, "text-embedding-3-small")
    async with _client(_app(model, names=names)) as c:
        yield c


async def test_float_and_base64_answers(client: httpx.AsyncClient, model: EmbeddingModel) -> None:
    texts = TEXTS[:3]
    body = {"model": DEFAULT_MODEL, "input": texts, "encoding_format": "float"}
    reply = await client.post("/v1/embeddings", json=body)
    assert reply.status_code == 200
    out = reply.json()
    assert out["object"] == "list" and out["model"] == DEFAULT_MODEL
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert {d["object"] for d in out["data"]} == {"embedding"}
    floats = np.array([d["embedding"] for d in out["data"]], np.float32)
    _close(floats, model.encode(texts))
    tokens = sum(model.count_tokens(texts))
    assert out["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    reply = await client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    assert reply.status_code == 200
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in reply.json()["data"]]
    )
    np.testing.assert_array_equal(decoded, floats)


async def test_one_string_an_alias_and_the_model_dimensions(
    client: httpx.AsyncClient,
) -> None:
    body = {"model": "text-embedding-3-small", "input": "hello", "dimensions": 384}
    reply = await client.post("/v1/embeddings", json=body)
    assert reply.status_code == 200
    out = reply.json()
    assert out["model"] == "text-embedding-3-small" and len(out["data"]) == 1
    assert len(out["data"][0]["embedding"]) == 384  # no encoding_format: floats


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": [1, 2, 3]}, "input"),  # token ids
        ({"input": [[1, 2], [3]]}, "input"),
        ({"input": ["ok", None]}, "input"),
        ({"input": ["x"] * (MAX_INPUTS + 1)}, "input"),
        ({"input": "x", "dimensions": 128}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": 5}, "input"),
        ({}, None),  # no input at all
    ],
)
async def test_invalid_requests_are_400(
    client: httpx.AsyncClient, body: dict[str, Any], param: str | None
) -> None:
    reply = await client.post("/v1/embeddings", json={"model": DEFAULT_MODEL, **body})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    reply = await client.post("/v1/embeddings", content=b"{not json")
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_json"


async def test_unknown_model_and_no_embedder_are_404(
    client: httpx.AsyncClient,
) -> None:
    reply = await client.post("/v1/embeddings", json={"model": "gpt-4o", "input": "x"})
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "model_not_found"
    async with _client(_app(None)) as bare:  # the name is configured, no model
        reply = await bare.post("/v1/embeddings", json={"model": DEFAULT_MODEL, "input": "x"})
    assert reply.status_code == 404 and reply.json()["error"]["param"] == "model"


async def test_api_keys_and_overload(model: EmbeddingModel) -> None:
    body = {"model": DEFAULT_MODEL, "input": "x"}
    async with _client(_app(model, {"sk-good": "team-a"}, max_queue=2)) as c:
        assert (await c.post("/v1/embeddings", json=body)).status_code == 401
        ok = {"Authorization": "Bearer sk-good"}
        assert (await c.post("/v1/embeddings", json=body, headers=ok)).status_code == 200
        too_many = {**body, "input": ["x", "y", "z"]}
        reply = await c.post("/v1/embeddings", json=too_many, headers=ok)
    assert reply.status_code == 503
    error = reply.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("server_error", "queue_full", None)


# ---- the OpenAI SDK over real HTTP -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server_url(model: EmbeddingModel) -> Iterator[str]:
    """uvicorn in a thread of this process, sharing the loaded model."""
    app = _app(model)
    port = _free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", ws="none", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("encoding", ["base64", "float"])
def test_openai_sdk_creates_embeddings(
    server_url: str, model: EmbeddingModel, encoding: str
) -> None:
    with openai.OpenAI(base_url=server_url, api_key="unused", max_retries=0) as client:
        kwargs: dict[str, Any] = {} if encoding == "base64" else {"encoding_format": "float"}
        # The SDK asks for base64 by default and decodes it itself.
        result = client.embeddings.create(model=DEFAULT_MODEL, input=TEXTS[:2], **kwargs)
        got = np.array([d.embedding for d in result.data], np.float32)
        _close(got, model.encode(TEXTS[:2]))
        assert result.model == DEFAULT_MODEL
        assert result.usage.prompt_tokens == sum(model.count_tokens(TEXTS[:2]))
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model=DEFAULT_MODEL, input=[[1, 2, 3]])
        with pytest.raises(openai.NotFoundError):
            client.embeddings.create(model="no-such-model", input="x")


async def test_a_request_over_the_token_limit_is_400(model: EmbeddingModel) -> None:
    app = _app(model)
    app.gateway.embedding_max_tokens = 300
    async with _client(app) as c:
        many = {"model": DEFAULT_MODEL, "input": ["a sentence of several words"] * 60}
        reply = await c.post("/v1/embeddings", json=many)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == "too_many_tokens"
        few = {"model": DEFAULT_MODEL, "input": ["a sentence of several words"] * 10}
        assert (await c.post("/v1/embeddings", json=few)).status_code == 200


def test_a_huge_text_is_cut_before_it_is_tokenized(model: EmbeddingModel) -> None:
    """The same vector and count as the text cut at any length past the model's window:
    what the tokenizer would have kept, without tokenizing megabytes first."""
    word = "embedding "
    huge, cut = word * 1_000_000, word * 2_000  # 10 MB, and well past 256 tokens
    encoded = model.encode_counted([huge, cut])
    assert encoded.tokens[0] == encoded.tokens[1] == model.max_seq_length
    np.testing.assert_allclose(encoded.vectors[0], encoded.vectors[1], atol=1e-6)
