"""Streams and complete answers, turned into each other, keeping every field.

Caches and conversation memory keep complete answers. A streamed answer is assembled
chunk by chunk (`Assembler`) and only counts once every choice has finished and the
stream ended cleanly: a stream cut off or failed mid-way is never kept (`record`). A
kept answer is served to a streaming client as proper chunks again (`replay`): the
role, the content (tool calls, logprobs), the finish reason per choice, then the usage
chunk. Both work on plain JSON data, so fields this code does not know survive the
round trip: string fields of a delta (`content`, `reasoning_content`, `refusal`, ...)
are joined, tool calls merged by index, anything else taken from the last chunk that
had it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from gateway.call import close_stream
from gateway.payload import Chunk, DecodeErrors, Payload
from gateway.views import AnswerView

_CHAT_CHUNK, _CHAT = "chat.completion.chunk", "chat.completion"
_TOP_SKIP = frozenset({"id", "object", "created", "model", "choices", "usage"})
_CHOICE_SKIP = frozenset({"index", "delta", "text", "logprobs", "finish_reason", "message"})


def is_usage_only(chunk: Payload) -> bool:
    """The usage chunk that ends a stream (no choices, only usage)."""
    try:
        view = chunk.view(AnswerView)
    except DecodeErrors:
        return False
    return not view.choices and view.usage is not None


class _Choice:
    __slots__ = ("extra", "finish_reason", "logprobs", "message", "text", "tools")

    def __init__(self) -> None:
        self.message: dict[str, Any] = {}  # chat: the delta fields, accumulated
        self.tools: dict[int, dict[str, Any]] = {}  # tool call index -> the call so far
        self.text: list[str] = []  # completions
        self.logprobs: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.extra: dict[str, Any] = {}  # other choice fields (vLLM's stop_reason, ...)


class Assembler:
    """Feeds on the chunks of one streamed answer; `body()` is the same answer complete."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._head: dict[str, Any] | None = None
        self._extra: dict[str, Any] = {}
        self.usage: Any = None
        self.chat = True
        self.unreadable = False  # an event that is not a JSON object: nothing to keep

    def feed(self, chunk: Payload) -> None:
        try:
            data = chunk.data
        except DecodeErrors:
            data = None
        if not isinstance(data, dict):
            self.unreadable = True  # passed on to the client all the same
            return
        if self._head is None:
            self._head = data
            self.chat = data.get("object") != "text_completion"
        if data.get("usage") is not None:
            self.usage = data["usage"]
        for key, value in data.items():
            if key not in _TOP_SKIP and value is not None:
                self._extra[key] = value
        for c in data.get("choices") or ():
            choice = self._choices.get(c.get("index", 0))
            if choice is None:
                choice = self._choices[c.get("index", 0)] = _Choice()
            self._feed_choice(choice, c)

    def _feed_choice(self, choice: _Choice, c: dict[str, Any]) -> None:
        delta = c.get("delta")
        if isinstance(delta, dict):
            for key, value in delta.items():
                if key == "tool_calls":
                    for piece in value or ():
                        _merge_tool(choice.tools, piece)
                elif isinstance(value, str) and key != "role":
                    choice.message[key] = choice.message.get(key, "") + value
                elif value is not None:
                    choice.message[key] = value
        if isinstance(c.get("text"), str):
            choice.text.append(c["text"])
        if c.get("logprobs") is not None:
            choice.logprobs = _merge_logprobs(choice.logprobs, c["logprobs"])
        if c.get("finish_reason") is not None:
            choice.finish_reason = c["finish_reason"]
        for key, value in c.items():  # a null only until a value comes (vLLM's stop_reason)
            if key not in _CHOICE_SKIP and (value is not None or key not in choice.extra):
                choice.extra[key] = value

    @property
    def complete(self) -> bool:
        """Every choice that started has finished (a cut-off stream has one that has not)."""
        return (
            bool(self._choices)
            and not self.unreadable
            and all(c.finish_reason is not None for c in self._choices.values())
        )

    def body(self) -> dict[str, Any]:
        head = self._head
        assert head is not None, "nothing was fed"
        choices = [self._choice_body(i, self._choices[i]) for i in sorted(self._choices)]
        usage = self.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return {
            "id": head.get("id"),
            "object": _CHAT if self.chat else "text_completion",
            "created": head.get("created"),
            "model": head.get("model"),
            "choices": choices,
            "usage": usage,
            **self._extra,
        }

    def _choice_body(self, index: int, c: _Choice) -> dict[str, Any]:
        out: dict[str, Any] = {"index": index}
        if self.chat:
            message = {"role": c.message.get("role", "assistant"), "content": None}
            message.update((k, v) for k, v in c.message.items() if k != "role")
            if c.tools:
                message["tool_calls"] = [
                    {k: v for k, v in c.tools[n].items() if k != "index"} for n in sorted(c.tools)
                ]
            out["message"] = message
        else:
            out["text"] = "".join(c.text)
        out["logprobs"] = c.logprobs
        out["finish_reason"] = c.finish_reason
        out.update(c.extra)
        return out


def _merge_tool(tools: dict[int, dict[str, Any]], piece: dict[str, Any]) -> None:
    n = int(piece.get("index", 0))
    tool = tools.setdefault(n, {"id": None, "type": "function", "function": {}})
    for key, value in piece.items():
        if key == "function" and isinstance(value, dict):
            fn = tool["function"]
            for fk, fv in value.items():
                if fk == "arguments" and isinstance(fv, str):
                    fn["arguments"] = fn.get("arguments", "") + fv
                elif fv is not None:
                    fn[fk] = fv
        elif value is not None:
            tool[key] = value
    tool["function"].setdefault("arguments", "")


def _merge_logprobs(seen: dict[str, Any] | None, new: Any) -> Any:
    """Chat logprobs (`content`/`refusal` lists) and legacy ones (parallel lists) append."""
    if not isinstance(new, dict):
        return new
    if seen is None:
        return {k: list(v) if isinstance(v, list) else v for k, v in new.items()}
    for key, value in new.items():
        if isinstance(value, list) and isinstance(seen.get(key), list):
            seen[key] = seen[key] + value
        elif value is not None or key not in seen:
            seen[key] = value
    return seen


Keep = Callable[[Payload], Awaitable[None]]


@runtime_checkable
class Recordable(Protocol):
    """A stream that already knows its complete answer once it has ended cleanly (a
    Recording, a flight's subscription): `record` adds to it instead of assembling the
    same chunks again."""

    def on_complete(self, keep: Keep) -> None: ...


def record(stream: AsyncIterator[Chunk], keep: Keep) -> AsyncIterator[Chunk]:
    """Passes `stream` on unchanged; once it has ended cleanly with every choice
    finished, hands the assembled answer to `keep`. A stream that fails, is cut off or is
    abandoned by the client hands over nothing. Plugins that each record the same stream
    (conversation memory over a cache) share one assembler."""
    if isinstance(stream, Recordable):
        stream.on_complete(keep)
        return stream
    recording = Recording(stream)
    recording.on_complete(keep)
    return recording


class Recording:
    """A stream passed on chunk by chunk while one Assembler reads along. A class rather
    than a generator: one layer less per chunk, and others can add their `keep`."""

    __slots__ = ("_assembler", "_ended", "_keeps", "_stream")

    def __init__(self, stream: AsyncIterator[Chunk]) -> None:
        self._stream = stream
        self._assembler = Assembler()
        self._keeps: list[Keep] = []
        self._ended = False

    def on_complete(self, keep: Keep) -> None:
        self._keeps.append(keep)

    def __aiter__(self) -> Recording:
        return self

    async def __anext__(self) -> Chunk:
        if self._ended:
            raise StopAsyncIteration
        try:
            chunk = await self._stream.__anext__()
        except StopAsyncIteration:
            self._ended = True
            await close_stream(self._stream)
            if self._assembler.complete:
                await hand_over(self._keeps, Payload.of(self._assembler.body()))
            raise
        except BaseException:
            self._ended = True
            await close_stream(self._stream)
            raise
        self._assembler.feed(chunk)
        return chunk

    async def aclose(self) -> None:
        self._ended = True
        await close_stream(self._stream)


async def hand_over(keeps: list[Keep], body: Payload) -> None:
    """The complete answer to each keeper in the order they asked."""
    for keep in keeps:
        await keep(body)


def replay(body: Payload, *, include_usage: bool, id: str | None = None) -> AsyncIterator[Chunk]:
    """A stored answer as the chunks a streaming client expects."""
    data = body.data
    if data.get("object") == "text_completion":
        return _replay_text(data, include_usage, id or data.get("id"))
    return _replay_chat(data, include_usage, id or data.get("id"))


def _top(data: dict[str, Any], id: Any, object_: str) -> dict[str, Any]:
    head = {"id": id, "object": object_, "created": int(time.time()), "model": data.get("model")}
    head.update((k, v) for k, v in data.items() if k not in _TOP_SKIP)
    return head


async def _replay_chat(data: dict[str, Any], include_usage: bool, id: Any) -> AsyncIterator[Chunk]:
    head = _top(data, id, _CHAT_CHUNK)

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> Chunk:
        body = {**head, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return Chunk.of(body)

    for c in data.get("choices") or ():
        index = c.get("index", 0)
        message = dict(c.get("message") or {})
        role = message.pop("role", "assistant")
        opening = {"role": role, "content": ""}
        yield chunk([{"index": index, "delta": opening, "logprobs": None, "finish_reason": None}])
        tools = message.pop("tool_calls", None)
        delta = {k: v for k, v in message.items() if v is not None}
        if tools:
            delta["tool_calls"] = [{"index": n, **t} for n, t in enumerate(tools)]
        if delta or c.get("logprobs") is not None:
            piece = {"index": index, "delta": delta, "logprobs": c.get("logprobs")}
            yield chunk([{**piece, "finish_reason": None}])
        end = {"index": index, "delta": {}, "logprobs": None}
        end["finish_reason"] = c.get("finish_reason")
        end.update((k, v) for k, v in c.items() if k not in _CHOICE_SKIP)
        yield chunk([end])
    if include_usage:
        yield chunk([], data.get("usage"))


async def _replay_text(data: dict[str, Any], include_usage: bool, id: Any) -> AsyncIterator[Chunk]:
    head = _top(data, id, "text_completion")
    for c in data.get("choices") or ():
        index = c.get("index", 0)
        piece = {"index": index, "text": c.get("text", ""), "logprobs": c.get("logprobs")}
        yield Chunk.of({**head, "choices": [{**piece, "finish_reason": None}]})
        end = {"index": index, "text": "", "finish_reason": c.get("finish_reason")}
        end.update((k, v) for k, v in c.items() if k not in _CHOICE_SKIP)
        yield Chunk.of({**head, "choices": [end]})
    if include_usage:
        yield Chunk.of({**head, "choices": [], "usage": data.get("usage")})
