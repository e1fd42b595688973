"""Server-sent events at the edge: each chunk's frame as it is (an upstream's bytes
unchanged, or the gateway's own `data: {...}`), then `data: [DONE]` for the chat and
completions streams that end with it (Responses API streams end with their last event).

A failure after the stream has started cannot change the 200 already sent, so it ends
the stream with an OpenAI error object as the last event (the SDK raises on it) and no
`[DONE]`: a client can always tell a cut-off answer from a finished one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from gateway.call import close_stream
from gateway.errors import OpenAIError, error_body, server_error
from gateway.payload import Chunk

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def frame(payload: bytes, event: bytes | None = None) -> bytes:
    head = b"" if event is None else b"event: " + event + b"\n"
    return head + b"data: " + payload + b"\n\n"


async def encode_sse(
    chunks: AsyncIterator[Chunk], *, done: bool = True, request_id: str = ""
) -> AsyncIterator[bytes]:
    """Frames for `chunks`; `done`: end with `data: [DONE]`."""
    event = None if done else b"error"
    try:
        async for chunk in chunks:
            yield chunk.frame
    except OpenAIError as exc:
        yield frame(error_body(exc), event)
        return
    except Exception:
        log.exception("stream failed after it started (request %s)", request_id)
        yield frame(error_body(server_error()), event)
        return
    finally:
        await close_stream(chunks)  # stops the upstream generation if the client went away
    if done:
        yield DONE
