"""POST /v1/embeddings answers in OpenAI's shape: through the gateway's HTTP edge in
process, and with the official SDK against a real uvicorn server."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import uvicorn

from gateway.auth import Authenticator
from gateway.embeddings import DEFAULT_MODEL, MAX_INPUTS, Embedder, EmbeddingModel
from gateway.http import Edge, create_app
from gateway.runtime import Gateway
from tests.gateway.embeddings.conftest import TEXTS, _close, _started

pytestmark = pytest.mark.anyio


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
        owns_embedder_model=False,  # the session's model: others use it after this app
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
