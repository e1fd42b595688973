"""The access log: one line per request once its answer is written (or the client has
gone), at INFO on the `llm_gateway.access` logger:

    POST /v1/chat/completions 200 412.3ms request_id=... tenant=default model=m cache=hit

With `--log-format json` the same fields come as one JSON object per line
(gateway/logs.py). `cache` is the exact cache's `x-cache` (hit, miss, bypass) or the
semantic cache's `x-semantic-cache`, "-" when neither answered; a request the edge
refused before it reached the runtime has no tenant or model ("-")."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gateway.runtime import Incoming

log = logging.getLogger("llm_gateway.access")

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
_CACHE_HEADERS = (b"x-cache", b"x-semantic-cache")


class AccessRecord:
    """What one request's log line needs, filled in as the answer goes out."""

    __slots__ = ("cache", "incoming", "method", "path", "request_id", "started", "status")

    def __init__(self, method: str, path: str) -> None:
        self.method, self.path = method, path
        self.started = time.perf_counter()
        self.status = 0  # 0: no answer was started (the client left first)
        self.request_id = "-"
        self.cache = "-"
        self.incoming: Incoming | None = None

    def watching(self, send: Send) -> Send:
        """`send`, noting the status and headers of the answer as it starts."""

        async def noted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-request-id":
                        self.request_id = value.decode("latin-1")
                    elif name in _CACHE_HEADERS and self.cache == "-":
                        self.cache = value.decode("latin-1")
            await send(message)

        return noted

    def write(self) -> None:
        if not log.isEnabledFor(logging.INFO):  # --log-level warning: no line, no work
            return
        ms = (time.perf_counter() - self.started) * 1e3
        incoming = self.incoming
        fields = {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration_ms": round(ms, 3),
            "request_id": self.request_id,
            "tenant": (incoming.tenant if incoming else None) or "-",
            "model": (incoming.model if incoming else None) or "-",
            "cache": self.cache,
        }
        log.info(
            "%s %s %s %.1fms request_id=%s tenant=%s model=%s cache=%s",
            self.method, self.path, self.status or "-", ms, fields["request_id"],
            fields["tenant"], fields["model"], self.cache,
            extra={"access": fields},
        )  # fmt: skip
