"""Cache decisions, free of I/O: what a cache key covers, which requests may be cached,
and what the client's `Cache-Control` header asks for.

Keys cover everything that can change the answer. Rather than list those fields (and
miss the next one an API version adds), the key hashes the whole request minus the
few fields known not to change the answer (`IGNORED_FIELDS`), plus the tenant, the
endpoint and the conversation scope. Requests arrive here as plain data (msgspec's
`to_builtins` of the typed request), so this module needs nothing of the gateway.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

# How the answer is delivered or who asked, not what it says. `stream_options` only adds
# a usage chunk, which a replay produces itself.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user"})

_encoder = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True, slots=True)
class CacheControl:
    """A request's `Cache-Control`: no_store = neither read nor write the cache;
    no_cache = do not answer from the cache but store the fresh answer; max_age =
    answers at most this old are acceptable, and a fresh one is kept this long (capped
    by the cache's own limit)."""

    no_store: bool = False
    no_cache: bool = False
    max_age: float | None = None

    @property
    def may_read(self) -> bool:
        return not (self.no_store or self.no_cache or self.max_age == 0)

    @property
    def may_write(self) -> bool:
        return not self.no_store


_DIRECTIVE = re.compile(r"\s*([A-Za-z-]+)\s*(?:=\s*\"?(\d+)\"?)?\s*")


def parse_cache_control(header: str | None) -> CacheControl:
    """Unknown directives and malformed values are ignored (RFC 9111 says so for caches)."""
    if not header:
        return CacheControl()
    no_store = no_cache = False
    max_age: float | None = None
    for part in header.split(","):
        match = _DIRECTIVE.fullmatch(part)
        if match is None:
            continue
        name, value = match.group(1).lower(), match.group(2)
        if name == "no-store":
            no_store = True
        elif name == "no-cache":
            no_cache = True
        elif name == "max-age" and value is not None:
            max_age = float(value)
    return CacheControl(no_store=no_store, no_cache=no_cache, max_age=max_age)


def is_reproducible(request: Mapping[str, Any]) -> bool:
    """Whether asking again would give the same answer: greedy decoding (temperature 0)
    or a fixed seed. Absent temperature means the server's default (1.0): not greedy."""
    return request.get("temperature") == 0 or request.get("seed") is not None


def entry_ttl(default_s: float, cap_s: float, control: CacheControl) -> float:
    """How long a fresh answer is kept: the client's max-age when it gives one (0 means
    "answer afresh", as no-cache does, not "keep for no time"), else the cache's default;
    never longer than the cap."""
    ttl = control.max_age if control.max_age else default_s
    return min(ttl, cap_s)


def is_fresh(age_s: float, control: CacheControl) -> bool:
    return control.max_age is None or age_s <= control.max_age


def normalized(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request as the key sees it: ignored fields and nulls dropped (an explicit
    null and an absent field mean the same default), text-only content parts joined
    into one string (the same prompt however the client packaged it)."""
    out = {k: v for k, v in request.items() if k not in IGNORED_FIELDS and v is not None}
    messages = out.get("messages")
    if isinstance(messages, list):
        out["messages"] = [_normalized_message(m) for m in messages]
    return out


def _normalized_message(message: Mapping[str, Any]) -> dict[str, Any]:
    m = {k: v for k, v in message.items() if v is not None}
    content = m.get("content")
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        m["content"] = "".join(str(p.get("text") or "") for p in content)
    return m


def exact_key(endpoint: str, tenant: str, scope: str | None, request: Mapping[str, Any]) -> str:
    """A hex digest naming the answer to `request` for `tenant` (and conversation scope)."""
    h = hashlib.sha256()
    h.update(_encoder.encode([endpoint, tenant, scope or "", normalized(request)]))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class SemanticSplit:
    """A chat request cut where the semantic cache compares: `context` (everything
    before the newest user turn, the turn's own non-text fields and all sampling
    parameters) must match exactly; only `query` (the newest user turn's text) is
    compared by meaning."""

    context_key: str
    query: str


def semantic_split(
    endpoint: str, tenant: str, scope: str | None, request: Mapping[str, Any]
) -> SemanticSplit | None:
    """None when the request has no user turn last with plain text (a tool result, an
    image, a legacy completion): those are left to the exact cache."""
    if endpoint != "chat.completions":
        return None
    norm = normalized(request)
    messages = norm.get("messages") or []
    if not messages:
        return None
    last = messages[-1]
    query = last.get("content")
    if last.get("role") != "user" or not isinstance(query, str) or not query.strip():
        return None
    rest = {k: v for k, v in last.items() if k != "content"}
    context = {**norm, "messages": [*messages[:-1], rest]}
    return SemanticSplit(exact_key(endpoint, tenant, scope, context), query)
