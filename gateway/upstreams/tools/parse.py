"""The answer's text -> tool calls: all at once (parse_calls) or as it streams
(CallStream, which holds back only what may still become a call)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from gateway.upstreams.tools.prompt import CLOSE, OPEN
from gateway.upstreams.tools.request import ToolRequest


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")


def parse_calls(text: str, tools: ToolRequest) -> tuple[str | None, list[Call]]:
    """(the content left, the calls). Text that is no valid call stays content."""
    stream = CallStream(tools)
    stream.feed(text)
    stream.finish()
    content = stream.content.strip() or None
    return (content, stream.calls) if stream.calls else (text, [])


class CallStream:
    """Feed the answer's text as it comes; read what may be sent so far: `take()` gives
    (content text, tool-call deltas in OpenAI's streamed shape)."""

    def __init__(self, tools: ToolRequest) -> None:
        self.tools = tools
        self.calls: list[Call] = []
        self.content = ""  # all content released, for the whole-answer parse
        self._out: list[str] = []  # content released since the last take()
        self._deltas: list[dict[str, Any]] = []
        self._buffer = ""
        # start (nothing but whitespace yet), text, call (inside a block), json (a bare
        # JSON answer), required, named
        self._state: str = "start" if tools.choice == "auto" else tools.choice
        self._spaces = ""  # whitespace held until text follows it (none around calls)

    def feed(self, text: str) -> None:
        if self._state == "named":
            self._stream_arguments(text)
            return
        self._buffer += text
        if self._state == "start" and self._buffer.strip():
            bare = self._buffer.lstrip()[0] in "{["
            self._state = "json" if bare else "text"
        while self._state in ("text", "call") and self._step():
            pass

    def finish(self) -> None:
        """The answer is complete: what is left becomes calls or content."""
        rest, self._buffer = self._buffer, ""
        if self._state in ("json", "required"):
            if not self._add_calls(rest):
                self._release(rest)
        elif self._state == "call":  # cut off before its closing tag
            if not self._add_calls(rest):
                self._release(OPEN + rest)
        elif self._state != "named":
            self._release(rest)
        self._spaces = ""

    def take(self) -> tuple[str, list[dict[str, Any]]]:
        out, deltas = "".join(self._out), self._deltas
        self._out, self._deltas = [], []
        return out, deltas

    # ---- internals ------------------------------------------------------------------

    def _step(self) -> bool:
        """Moves what it can out of the buffer; False when it must wait for more."""
        if self._state == "text":
            at = self._buffer.find(OPEN)
            if at < 0:
                keep = _partial_suffix(self._buffer, OPEN)
                self._release(self._buffer[: len(self._buffer) - keep])
                self._buffer = self._buffer[len(self._buffer) - keep :]
                return False
            self._release(self._buffer[:at])
            self._buffer, self._state, self._spaces = self._buffer[at + len(OPEN) :], "call", ""
            return True
        at = self._buffer.find(CLOSE)
        if at < 0:
            return False
        body, self._buffer = self._buffer[:at], self._buffer[at + len(CLOSE) :]
        if not self._add_calls(body):
            self._release(OPEN + body + CLOSE)
        self._state = "text"
        return True

    def _stream_arguments(self, text: str) -> None:
        """A named function's answer is its arguments: streamed as they come."""
        if not self.calls:
            self.calls.append(Call(self.tools.named or "", ""))
            self._deltas.append(_call_delta(0, self.calls[0]))
        call = self.calls[0]
        self.calls[0] = Call(call.name, call.arguments + text, call.id)
        if text:
            self._deltas.append({"index": 0, "function": {"arguments": text}})

    def _add_calls(self, text: str) -> bool:
        """Adds the call(s) `text` holds (a call object, or a list of them); False if it
        holds none that is valid for the request's functions."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return False
        items = value if isinstance(value, list) else [value]
        calls = [c for c in (self._call(item) for item in items) if c is not None]
        if not calls or len(calls) != len(items):
            return False
        for call in calls:
            if self.calls and not self.tools.parallel:
                break
            self._deltas.append(_call_delta(len(self.calls), call))
            self.calls.append(call)
        return True

    def _call(self, item: Any) -> Call | None:
        if not isinstance(item, dict) or item.get("name") not in self.tools.functions:
            return None
        arguments = item.get("arguments", item.get("parameters", {}))  # Llama 3 says parameters
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        return Call(item["name"], json.dumps(arguments, ensure_ascii=False, separators=(",", ":")))

    def _release(self, text: str) -> None:
        """Content, with whitespace next to calls left out."""
        if not text.strip():
            self._spaces += text
            return
        if not self.calls or self._out or self.content.strip():
            text = self._spaces + text
        self._spaces = ""
        self._out.append(text)
        self.content += text


def _call_delta(index: int, call: Call) -> dict[str, Any]:
    """A call's first streamed delta in OpenAI's shape (its arguments so far)."""
    function = {"name": call.name, "arguments": call.arguments}
    return {"index": index, "id": call.id, "type": "function", "function": function}


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a start of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
