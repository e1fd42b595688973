"""Streams and complete answers, turned into each other.

Caches and conversation memory keep complete answers (`Body`). A streamed answer is
assembled chunk by chunk (`Assembler`) and only counts once every choice has finished
and the stream ended cleanly: a stream cut off or failed mid-way is never kept
(`record`). A kept answer is served to a streaming client as proper chunks again
(`replay`): the role, the content (tool calls, logprobs), the finish reason per
choice, then the usage chunk when the client asked for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway.call import Body, Chunk, close_stream
from gateway.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FunctionCall,
    TokenLogprob,
    ToolCall,
    Usage,
)


class _Choice:
    __slots__ = ("completion_logprobs", "finish_reason", "logprobs", "parts", "role", "tools")

    def __init__(self) -> None:
        self.role = "assistant"
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.tools: dict[int, dict[str, Any]] = {}  # tool call index -> id, name, arguments
        self.logprobs: list[TokenLogprob] | None = None
        self.completion_logprobs: CompletionLogprobs | None = None


class Assembler:
    """Feeds on the chunks of one streamed answer; `body()` is the same answer complete."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._first: Chunk | None = None
        self.usage: Usage | None = None

    def feed(self, chunk: Chunk) -> None:
        if self._first is None:
            self._first = chunk
        if chunk.usage is not None:
            self.usage = chunk.usage
        if isinstance(chunk, ChatCompletionChunk):
            for c in chunk.choices:
                self._chat(c)
        else:
            for t in chunk.choices:
                self._text(t)

    def _choice(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice()
        return choice

    def _chat(self, c: ChatChunkChoice) -> None:
        choice = self._choice(c.index)
        d = c.delta
        if d.role:
            choice.role = d.role
        if d.content:
            choice.parts.append(d.content)
        for piece in d.tool_calls or ():
            tool = choice.tools.setdefault(int(piece.get("index", 0)), {"arguments": ""})
            if piece.get("id"):
                tool["id"] = piece["id"]
            fn = piece.get("function") or {}
            if fn.get("name"):
                tool["name"] = fn["name"]
            tool["arguments"] += fn.get("arguments") or ""
        if c.logprobs is not None and c.logprobs.content:
            choice.logprobs = (choice.logprobs or []) + list(c.logprobs.content)
        if c.finish_reason is not None:
            choice.finish_reason = c.finish_reason

    def _text(self, t: CompletionChoice) -> None:
        choice = self._choice(t.index)
        if t.text:
            choice.parts.append(t.text)
        if t.logprobs is not None:
            lp, seen = t.logprobs, choice.completion_logprobs
            if seen is None:
                choice.completion_logprobs = CompletionLogprobs(
                    tokens=list(lp.tokens),
                    token_logprobs=list(lp.token_logprobs),
                    top_logprobs=None if lp.top_logprobs is None else list(lp.top_logprobs),
                    text_offset=list(lp.text_offset),
                )
            else:
                seen.tokens += lp.tokens
                seen.token_logprobs += lp.token_logprobs
                if seen.top_logprobs is not None and lp.top_logprobs is not None:
                    seen.top_logprobs += lp.top_logprobs
                seen.text_offset += lp.text_offset
        if t.finish_reason is not None:
            choice.finish_reason = t.finish_reason

    @property
    def complete(self) -> bool:
        """Every choice that started has finished (a cut-off stream has one that has not)."""
        return bool(self._choices) and all(
            c.finish_reason is not None for c in self._choices.values()
        )

    def body(self) -> Body:
        first = self._first
        assert first is not None, "nothing was fed"
        usage = self.usage or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        indexes = sorted(self._choices)
        if isinstance(first, ChatCompletionChunk):
            return ChatCompletion(
                id=first.id,
                created=first.created,
                model=first.model,
                choices=[self._chat_choice(i, self._choices[i]) for i in indexes],
                usage=usage,
                system_fingerprint=first.system_fingerprint,
            )
        return Completion(
            id=first.id,
            created=first.created,
            model=first.model,
            choices=[
                CompletionChoice(
                    index=i,
                    text="".join(self._choices[i].parts),
                    finish_reason=self._choices[i].finish_reason,
                    logprobs=self._choices[i].completion_logprobs,
                )
                for i in indexes
            ],
            usage=usage,
            system_fingerprint=first.system_fingerprint,
        )

    @staticmethod
    def _chat_choice(index: int, c: _Choice) -> ChatChoice:
        tools = [
            ToolCall(
                id=t.get("id", f"call_{index}_{n}"),
                function=FunctionCall(name=t.get("name", ""), arguments=t["arguments"]),
            )
            for n, t in sorted(c.tools.items())
        ]
        message = AssistantMessage(
            role=c.role, content="".join(c.parts) if c.parts else None, tool_calls=tools or None
        )
        logprobs = None if c.logprobs is None else ChoiceLogprobs(content=c.logprobs)
        return ChatChoice(
            index=index, message=message, finish_reason=c.finish_reason, logprobs=logprobs
        )


async def record(
    stream: AsyncIterator[Chunk], on_complete: Callable[[Body], Awaitable[None]]
) -> AsyncIterator[Chunk]:
    """Passes `stream` on unchanged; once it has ended cleanly with every choice
    finished, hands the assembled answer to `on_complete`. A stream that fails, is cut
    off or is abandoned by the client hands over nothing."""
    assembler = Assembler()
    try:
        async for chunk in stream:
            assembler.feed(chunk)
            yield chunk
    finally:
        await close_stream(stream)
    if assembler.complete:
        await on_complete(assembler.body())


def replay(body: Body, *, include_usage: bool, id: str | None = None) -> AsyncIterator[Chunk]:
    """A stored answer as the chunks a streaming client expects."""
    if isinstance(body, ChatCompletion):
        return _replay_chat(body, include_usage, id or body.id)
    return _replay_text(body, include_usage, id or body.id)


async def _replay_chat(body: ChatCompletion, include_usage: bool, id: str) -> AsyncIterator[Chunk]:
    created = int(time.time())

    def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=id,
            created=created,
            model=body.model,
            choices=choices,
            usage=usage,
            system_fingerprint=body.system_fingerprint,
        )

    for c in body.choices:
        m = c.message
        yield chunk([ChatChunkChoice(index=c.index, delta=ChatDelta(role=m.role, content=""))])
        tools = None
        if m.tool_calls:
            tools = [
                {
                    "index": n,
                    "id": t.id,
                    "type": t.type,
                    "function": {"name": t.function.name, "arguments": t.function.arguments},
                }
                for n, t in enumerate(m.tool_calls)
            ]
        if m.content or tools:
            delta = ChatDelta(content=m.content or None, tool_calls=tools)
            yield chunk([ChatChunkChoice(index=c.index, delta=delta, logprobs=c.logprobs)])
        yield chunk(
            [ChatChunkChoice(index=c.index, delta=ChatDelta(), finish_reason=c.finish_reason)]
        )
    if include_usage:
        yield chunk([], body.usage)


async def _replay_text(body: Completion, include_usage: bool, id: str) -> AsyncIterator[Chunk]:
    created = int(time.time())
    for c in body.choices:
        yield Completion(
            id=id,
            created=created,
            model=body.model,
            choices=[
                CompletionChoice(
                    index=c.index, text=c.text, finish_reason=None, logprobs=c.logprobs
                )
            ],
        )
        yield Completion(
            id=id,
            created=created,
            model=body.model,
            choices=[CompletionChoice(index=c.index, text="", finish_reason=c.finish_reason)],
        )
    if include_usage:
        yield Completion(id=id, created=created, model=body.model, choices=[], usage=body.usage)
