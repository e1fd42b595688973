"""The edge's limits against a real `llm-gateway serve --config` process, over raw
sockets where a well-behaved client library would not misbehave: bodies past the limit
(declared or not), too many or too large headers, a request head or body that stops
arriving, bodies nested too deeply. Each gets its status, the server keeps serving, and
nothing reaches the upstream."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.serving import gateway_config, model_route, upstream_stats

LIMITS = (
    "[server]\nmax_body_mb = 0.01\nmax_headers = 20\nmax_header_kb = 4\n"
    "header_timeout_s = 1\nbody_timeout_s = 1\n"
)


@pytest.fixture
def served(
    mock_upstream: Callable[..., str], gateway: Callable[[str], str]
) -> Iterator[tuple[str, str]]:
    upstream = mock_upstream()
    yield gateway(gateway_config({"g": [upstream]}, model_route(["g"]), LIMITS)), upstream


def _exchange(url: str, raw: bytes, wait_s: float = 10.0) -> bytes:
    """Sends `raw` and reads until the server closes or answers fully."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        sock.sendall(raw)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        return got


def _chat_body(size: int) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x" * size}]}
    ).encode()


def _post(url: str, body: bytes, extra: str = "") -> bytes:
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return _exchange(url, head.encode() + body)


def test_a_declared_body_over_the_limit_is_413_before_it_is_read(
    served: tuple[str, str],
) -> None:
    url, upstream = served
    reply = httpx.post(url + "/v1/chat/completions", content=_chat_body(20_000))
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    assert reply.headers["x-request-id"]
    assert upstream_stats(upstream)["requests"] == 0
    assert httpx.post(url + "/v1/chat/completions", content=_chat_body(100)).status_code == 200


def test_a_chunked_body_over_the_limit_is_413(served: tuple[str, str]) -> None:
    url, upstream = served

    def pieces() -> Iterator[bytes]:  # no content-length: sent chunked
        for _ in range(40):
            yield b"x" * 1000

    reply = httpx.post(url + "/v1/chat/completions", content=pieces())
    assert reply.status_code == 413
    assert upstream_stats(upstream)["requests"] == 0


def test_too_many_or_too_large_headers_are_431(served: tuple[str, str]) -> None:
    url, _ = served
    many = "".join(f"x-h{i}: v\r\n" for i in range(30))
    assert _post(url, _chat_body(10), many).startswith(b"HTTP/1.1 431")
    large = f"x-big: {'v' * 8000}\r\n"
    assert _post(url, _chat_body(10), large).startswith(b"HTTP/1.1 431")
    assert httpx.get(url + "/health").status_code == 200


def test_a_head_that_stops_arriving_is_408_and_closed(served: tuple[str, str]) -> None:
    url, _ = served
    # Half a request line, then silence: the server must not wait forever.
    assert _exchange(url, b"POST /v1/chat/comp").startswith(b"HTTP/1.1 408")
    assert _exchange(url, b"").startswith(b"HTTP/1.1 408")  # a connection that says nothing


def test_a_body_that_stops_arriving_is_408_and_closed(served: tuple[str, str]) -> None:
    url, upstream = served
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        "content-length: 1000\r\n\r\n"
    )
    got = _exchange(url, head.encode() + b'{"model": "m", ')
    assert got.startswith(b"HTTP/1.1 408") or got == b""  # closed, whatever it could say
    assert upstream_stats(upstream)["requests"] == 0
    assert httpx.get(url + "/health").status_code == 200


def test_a_body_nested_too_deeply_is_400(served: tuple[str, str]) -> None:
    url, upstream = served
    deep = b'{"model": "m", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    reply = httpx.post(url + "/v1/chat/completions", content=deep)
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"
    for path in ("/v1/embeddings", "/v1/moderations"):
        body = b'{"model": "m", "input": ' + b"[" * 1000 + b"]" * 1000 + b"}"
        assert httpx.post(url + path, content=body).status_code == 400
    assert upstream_stats(upstream)["requests"] == 0
