"""Which headers cross the gateway, and the request id every exchange carries.

- `x-request-id`: the client's when it sent a sane one (1-200 visible ASCII
  characters), else one made here; echoed on every answer and error, sent upstream,
  put on spans and log lines. The upstream's own id comes back as
  `x-upstream-request-id`.
- Client -> upstream: W3C trace context (`traceparent`, `tracestate`, `baggage`) and the
  request id always; other client headers only when named in `[headers] forward`.
- Upstream -> client: the headers named in `[headers] expose` (rate limits,
  Retry-After, processing time...), on answers and on errors alike.

Names match case-insensitively; a rule ending in `*` matches every name it prefixes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping

REQUEST_ID = "x-request-id"
UPSTREAM_REQUEST_ID = "x-upstream-request-id"
TRACE_CONTEXT = ("traceparent", "tracestate", "baggage")

# What OpenAI-compatible clients send that an upstream may need, and what upstreams
# answer that clients read (the OpenAI SDK's retry logic reads Retry-After and the
# x-ratelimit-* family; it also reads retry-after-ms).
DEFAULT_FORWARD = ("openai-organization", "openai-project", "openai-beta")
DEFAULT_EXPOSE = (
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-*",
    "openai-processing-ms",
    "openai-version",
    "openai-organization",
    "openai-project",
)

_SANE_ID = re.compile(r"[\x21-\x7e]{1,200}")


def request_id(sent: str | None) -> str:
    """The client's x-request-id when it is sane, else a new one."""
    if sent and _SANE_ID.fullmatch(sent):
        return sent
    return f"req_{random.getrandbits(128):032x}"  # unique, not secret: no need for urandom


class HeaderRules:
    """An allow-list of header names: exact ones, and prefixes written `name-*`."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, names: Iterable[str]) -> None:
        lowered = [n.strip().lower() for n in names if n.strip()]
        self.exact = frozenset(n for n in lowered if not n.endswith("*"))
        self.prefixes = tuple(n[:-1] for n in lowered if n.endswith("*"))

    def allows(self, name: str) -> bool:
        return name in self.exact or (bool(self.prefixes) and name.startswith(self.prefixes))

    def pick(self, headers: Mapping[str, str]) -> dict[str, str]:
        """The allowed ones of `headers` (whose names are lower-case)."""
        if not self.prefixes:  # the usual case: a few names looked up, not every header
            return {k: headers[k] for k in self.exact if k in headers}
        return {k: v for k, v in headers.items() if self.allows(k)}

    def pick_raw(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in headers:
            name = k.decode("latin-1").lower()
            if self.allows(name):
                out[name] = v.decode("latin-1")
        return out
