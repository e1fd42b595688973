"""Server-sent events at the edge: chunks -> `data: {...}` frames, then `data: [DONE]`.

A failure after the stream has started cannot change the 200 already sent, so it ends
the stream with an OpenAI error object as the last event (the SDK raises on it) and no
`[DONE]`: a client can always tell a cut-off answer from a finished one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import msgspec

from gateway.call import close_stream
from gateway.errors import OpenAIError
from gateway.schemas import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def frame(payload: bytes) -> bytes:
    return b"data: " + payload + b"\n\n"


async def encode_sse(chunks: AsyncIterator[msgspec.Struct]) -> AsyncIterator[bytes]:
    encoder = msgspec.json.Encoder()
    try:
        async for chunk in chunks:
            yield frame(encoder.encode(chunk))
    except OpenAIError as exc:
        yield frame(encoder.encode(_error(exc.message, exc.error_type, exc.code)))
        return
    except Exception:
        log.exception("stream failed after it started")
        yield frame(
            encoder.encode(_error("The stream was interrupted by a server error.", "server_error"))
        )
        return
    finally:
        await close_stream(chunks)  # stops the upstream generation if the client went away
    yield DONE


def _error(message: str, type_: str, code: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=ErrorBody(message=message, type=type_, code=code))
