"""Conversation context: the gateway remembers a chat, so a client sends only its new
messages and names the conversation with an `x-conversation-id` header.

Per chat call with the header (others pass through untouched):

- The id is 1-128 characters of [A-Za-z0-9._:-]; anything else is a 400 naming
  `x-conversation-id`.
- The stored history (`conv:<tenant>:<id>` in the gateway store: another tenant using
  the same id sees nothing) is put in front of the new messages and trimmed to the
  model's window less the room kept for the answer (policies/context.py: the system
  prompt and the new messages always, then the most recent whole turns that fit).
- After a complete answer the whole conversation is stored untrimmed (a larger model
  later sees more), bounded by `max_stored_messages`: the stored history, the new
  messages and the assistant's reply (choice 0). A failed request, or a stream that
  fails or is cut off, stores nothing, so a turn is never half-written. While the store
  is failing, calls are answered without history and nothing is written (a history
  that could not be read must not be overwritten by one turn). Streams reach
  the client unchanged; the answer is assembled alongside (gateway/replay.py).
- Requests on one conversation are served one at a time in this process (a lock from
  loading the history until the answer is stored, for a stream until it ends), so a
  second request sees the first one's turn. Gateway replicas sharing a Redis do not
  coordinate: two requests on one conversation at once on two replicas can lose a turn.
- Response headers: `x-conversation-id`, `x-conversation-messages` (stored messages
  sent upstream) and `x-conversation-trimmed` (stored messages left out).

The same id is the routing affinity key (routing's conversation_affinity policy reads
`call.conversation_id`, so a conversation's turns reach the backend that has its prefix
cached) and part of the exact and semantic cache keys (an answer is reused only within
its conversation); this plugin has nothing to do for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from gateway.call import CHAT, Call, Reply, close_stream
from gateway.errors import InvalidRequest
from gateway.payload import Chunk, Payload
from gateway.plugin import Next, Plugin
from gateway.replay import record
from gateway.views import ChatView
from policies.context import Message as PlainMessage
from policies.context import bound, merge, trim

if TYPE_CHECKING:
    from gateway.runtime import PluginHost
    from gateway.stores import Store

log = logging.getLogger(__name__)

HEADER = "x-conversation-id"
MESSAGES_HEADER = "x-conversation-messages"
TRIMMED_HEADER = "x-conversation-trimmed"

_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_encoder = msgspec.json.Encoder()
Message = dict[str, Any]  # one chat message as the client sent it (every field kept)


def store_key(tenant: str, conversation_id: str) -> str:
    # The id may contain ':', so the tenant is quoted: tenants "a" and "a:b" can never
    # share a key ("conv:a:b:c" is tenant "a", id "b:c" only).
    return f"conv:{quote(tenant, safe='')}:{conversation_id}"


def encode_history(messages: list[PlainMessage]) -> bytes:
    return _encoder.encode(messages)


def decode_history(raw: bytes | None) -> list[Message]:
    """An empty history for a missing entry, or one this version cannot read."""
    if raw is None:
        return []
    try:
        messages = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        log.warning("unreadable conversation history, starting afresh: %s", exc)
        return []
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
    ):
        log.warning("unreadable conversation history, starting afresh")
        return []
    return messages


def reply_message(body: Payload) -> Message | None:
    """The assistant message to remember: choice 0's (the one a client continues from)."""
    data = body.data
    choices = [c for c in data.get("choices") or () if isinstance(c.get("message"), dict)]
    if not choices:
        return None
    m = min(choices, key=lambda c: c.get("index", 0))["message"]
    content, tool_calls = m.get("content"), m.get("tool_calls")
    if content is None and not tool_calls:
        # A refusal has no content; an assistant message with neither content nor tool
        # calls is refused by some upstreams on the next turn.
        content = m.get("refusal") or ""
    message: Message = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


class Plan:
    """One call's messages as policies/context.py decides them (on the plain messages,
    so every field a client sent is kept, in what is sent and in what is stored)."""

    def __init__(self, history: list[Message], new: list[Message], budget_tokens: int) -> None:
        self.result = trim(history, new, budget_tokens)
        self._merged = merge(history, new)

    def sent(self) -> list[PlainMessage]:
        return list(self.result.messages)

    def to_store(self, answer: Message, max_messages: int) -> list[PlainMessage]:
        """The whole conversation with the answer, untrimmed but bounded."""
        return list(bound([*self._merged, answer], max_messages))


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holding or waiting


class KeyedLocks:
    """One asyncio.Lock per key, kept only while someone holds or waits for it (so a
    million conversations leave no million locks behind)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def acquire(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:  # cancelled while waiting: never held
            self._leave(key, entry)
            raise

    def release(self, key: str) -> None:
        entry = self._entries[key]
        entry.lock.release()
        self._leave(key, entry)

    def _leave(self, key: str, entry: _Entry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._entries[key]


class _Held:
    """A reply stream that holds its conversation's lock until it ends, fails or is
    closed. A class rather than a generator: a generator never started runs no `finally`
    when closed, and a client can go away before the first chunk."""

    def __init__(self, stream: AsyncIterator[Chunk], release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    def __aiter__(self) -> _Held:
        return self

    async def __anext__(self) -> Chunk:
        try:
            return await self._stream.__anext__()
        except BaseException:  # the end (StopAsyncIteration), a failure or cancellation
            self._done()
            raise

    async def aclose(self) -> None:
        try:
            await close_stream(self._stream)
        finally:
            self._done()

    def _done(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __del__(self) -> None:
        # Last resort for a stream dropped without being read or closed: a lock held
        # forever would hang every later request on the conversation. At interpreter
        # exit the loop may be gone; nobody is left waiting then.
        with contextlib.suppress(RuntimeError):
            self._done()


class ConversationContext(Plugin):
    name = "context"

    def __init__(
        self,
        *,
        max_context_tokens: int = 8192,
        reserve_output_tokens: int = 512,
        ttl_s: float = 86400.0,
        max_stored_messages: int = 400,
    ) -> None:
        if max_context_tokens < 1 or reserve_output_tokens < 0 or max_stored_messages < 1:
            raise TypeError(
                "max_context_tokens and max_stored_messages must be positive, "
                "reserve_output_tokens not negative"
            )
        if ttl_s <= 0:
            raise TypeError("ttl_s must be positive")
        self.max_context_tokens = max_context_tokens
        self.reserve_output_tokens = reserve_output_tokens
        self.ttl_s = ttl_s
        self.max_stored_messages = max_stored_messages
        self.locks = KeyedLocks()
        self.store: Store | None = None

    async def startup(self, *, gateway: PluginHost) -> None:
        self.store = gateway.store

    def budget(self, request: ChatView) -> int:
        """Prompt tokens the window leaves once the answer has its room: the request's own
        limit when it sets one, else the configured reserve."""
        reserve = request.max_completion_tokens or request.max_tokens or self.reserve_output_tokens
        return self.max_context_tokens - reserve

    async def handle(self, *, call: Call, call_next: Next) -> Reply:
        conversation = call.conversation_id
        if conversation is None or call.endpoint != CHAT:
            return await call_next(call)
        if not _VALID_ID.fullmatch(conversation):
            raise InvalidRequest(
                "Invalid x-conversation-id: use 1 to 128 characters of letters, digits and . _ : -",
                param=HEADER,
                code="invalid_value",
            )
        store = self.store
        if store is None:  # not started: nothing to remember with
            return await call_next(call)

        key = store_key(call.tenant, conversation)
        await self.locks.acquire(key)
        try:
            history = decode_history(await store.get(key))
            # A store that failed reads as a miss: the history is unknown, not empty, and
            # writing this turn alone would wipe the conversation once the store is back.
            unknown = bool(getattr(store, "degraded", False))
            plan = Plan(history, call.body.data["messages"], self.budget(call.request))
            call.response_headers[HEADER] = conversation
            call.response_headers[MESSAGES_HEADER] = str(plan.result.history_sent)
            call.response_headers[TRIMMED_HEADER] = str(plan.result.dropped_messages)
            reply = await call_next(call.edit(messages=plan.sent()))
        except BaseException:
            self.locks.release(key)
            raise

        async def keep(body: Payload) -> None:
            message = reply_message(body)
            if message is not None and not unknown:
                messages = plan.to_store(message, self.max_stored_messages)
                await store.set(key, encode_history(messages), self.ttl_s)

        if reply.stream is None:
            try:
                if reply.body is not None:
                    await keep(reply.body)
            finally:
                self.locks.release(key)
            return reply
        reply.stream = _Held(record(reply.stream, keep), lambda: self.locks.release(key))
        return reply
