"""Chat messages (and tools) -> the prompt's token ids, through the model's template; a
large prompt is rendered and tokenized off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from backend.tokenizer import Tokenizer
from backend.tokenizer.chat_template import select_template
from gateway.errors import InvalidRequest
from gateway.schemas import ChatMessage
from gateway.upstreams.engine_params import message_dict
from gateway.upstreams.tools import ToolRequest, prompt_messages

# Prompts longer than this (characters) are rendered and tokenized on a worker thread:
# a long prompt takes the tokenizer milliseconds to seconds, during which the event
# loop would answer nothing else; a short one costs less than the thread hop.
OFF_LOOP_CHARS = 16_384
T = TypeVar("T")
R = TypeVar("R")


async def off_loop_if_large(size: int, fn: Callable[[T], R], arg: T) -> R:
    """fn(arg), on a worker thread when `size` (characters) is large."""
    if size > OFF_LOOP_CHARS:
        return await asyncio.to_thread(fn, arg)
    return fn(arg)


def render_chat(
    tokenizer: Tokenizer, messages: Sequence[ChatMessage], tools: ToolRequest | None
) -> list[int]:
    """The prompt for `messages`; a template that fails is a 400 on 'messages'."""
    dicts = [message_dict(m, i) for i, m in enumerate(messages)]
    try:
        template = select_template(
            tokenizer.chat_template, tokenizer.chat_templates, tools=tools and tools.tools
        )
        dicts, tools_variable = prompt_messages(dicts, tools, template)
        text = tokenizer.apply_chat_template(
            dicts, add_generation_prompt=True, tools=tools_variable
        )
    except ValueError as exc:
        raise InvalidRequest(
            f"The messages could not be formatted: {exc}", param="messages"
        ) from exc
    # The template writes special tokens (BOS included) itself; add nothing more.
    return tokenizer.encode(text, add_special_tokens=False)


def text_size(messages: Sequence[ChatMessage]) -> int:
    """Characters of the messages' contents, however each is packaged."""
    return sum(_size(m.content) for m in messages)


def _size(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(getattr(p, "text", None) or "") for p in content)
    return 0
