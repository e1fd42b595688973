"""Conversation context decisions, free of I/O: how big a message is, how a stored
conversation and a request's new messages fit together, and which earlier turns fit in
the model's context window.

Messages are plain dicts in OpenAI's chat shape (`role`, `content`, `name`,
`tool_calls`, `tool_call_id`), as msgspec's `to_builtins` gives them, so this module
needs nothing of the gateway. Functions hand back the caller's own message objects, not
copies, so a caller holding typed messages can map the answer back by identity.

Shape of a conversation, as these functions see it:

    [system/developer ...]  pinned: always sent (a system prompt in the new messages
                            replaces the stored ones and goes first)
    turn, turn, ...         a turn starts at a user message and runs up to the next one,
                            so an assistant's tool calls stay with their tool results;
                            the oldest turns are dropped first when the budget is short
    new messages            always sent in full, with the stored part of their turn
                            (a new tool result needs the stored assistant call before it)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Message = Mapping[str, Any]

SYSTEM_ROLES = frozenset({"system", "developer"})
# The gateway does not tokenize: about four characters a token for English text, plus a
# few tokens each message costs in any chat template (role markers, separators).
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4


def is_system(message: Message) -> bool:
    return message.get("role") in SYSTEM_ROLES


def _chars(message: Message) -> int:
    content = message.get("content")
    if isinstance(content, str):
        n = len(content)
    elif isinstance(content, list):
        # Only text parts have a size we can guess; an image's cost depends on the model.
        n = sum(
            len(p.get("text") or "")
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    else:
        n = 0
    n += len(message.get("name") or "")
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        n += len(fn.get("name") or "") + len(fn.get("arguments") or "")
    return n


def estimate_tokens(message: Message) -> int:
    """A rough token count: characters / 4, rounded up, plus the per-message overhead."""
    return MESSAGE_OVERHEAD_TOKENS - (-_chars(message) // CHARS_PER_TOKEN)


def merge(history: Sequence[Message], new: Sequence[Message]) -> list[Message]:
    """The whole conversation once `new` is added to `history`. When `new` brings a system
    prompt (any system/developer message), it replaces the stored ones and goes first: a
    client that sends its system prompt with every request keeps exactly one, the newest."""
    head, body, tail = _split(history, new)
    return [*head, *body, *tail]


def _split(
    history: Sequence[Message], new: Sequence[Message]
) -> tuple[list[Message], list[Message], list[Message]]:
    """(new system prompt, stored messages that still count, new messages after it)."""
    prompt = [m for m in new if is_system(m)]
    if not prompt:
        return [], list(history), list(new)
    return prompt, [m for m in history if not is_system(m)], [m for m in new if not is_system(m)]


def turn_ids(messages: Sequence[Message]) -> list[int]:
    """Each message's turn number. A user message starts a turn; messages before the
    first user message form turn 0 of their own (an assistant's greeting, say)."""
    ids: list[int] = []
    turn = 0
    for i, m in enumerate(messages):
        if m.get("role") == "user" and i > 0:
            turn += 1
        ids.append(turn)
    return ids


@dataclass(frozen=True, slots=True)
class TrimResult:
    """messages: what to send, in order. history_sent: how many of them came from the
    stored history; dropped_messages / dropped_turns: stored messages (whole turns) left
    out for the budget; replaced: stored system messages a new system prompt replaced.
    tokens: the estimate for `messages`; over_budget: even the pinned part did not fit
    (sent anyway: the upstream answers with its own context-length error)."""

    messages: list[Message]
    history_sent: int
    dropped_messages: int
    dropped_turns: int
    replaced: int
    tokens: int
    over_budget: bool


def trim(history: Sequence[Message], new: Sequence[Message], budget_tokens: int) -> TrimResult:
    """The messages to send for `new` on top of `history` within `budget_tokens`: the
    system prompt, the new messages and the stored part of their turn always; then the
    most recent whole earlier turns that fit, oldest dropped first. A turn that does not
    fit ends the search: sending an older turn without the ones after it would leave a
    hole in the conversation."""
    head, body, tail = _split(history, new)
    seq = [*body, *tail]
    ids = turn_ids(seq)
    # The turn the new messages start in is the current one; earlier turns are optional.
    current = ids[len(body)] if tail else (ids[-1] + 1 if ids else 0)
    costs = [estimate_tokens(m) for m in seq]

    keep = [is_system(m) or ids[i] >= current for i, m in enumerate(seq)]
    used = sum(estimate_tokens(m) for m in head) + sum(
        c for c, k in zip(costs, keep, strict=True) if k
    )
    over_budget = used > budget_tokens

    turn_cost: dict[int, int] = {}
    for i, kept in enumerate(keep):
        if not kept:
            turn_cost[ids[i]] = turn_cost.get(ids[i], 0) + costs[i]
    kept_turns: set[int] = set()
    for turn in sorted(turn_cost, reverse=True):
        if used + turn_cost[turn] > budget_tokens:
            break
        used += turn_cost[turn]
        kept_turns.add(turn)

    sent: list[Message] = list(head)
    history_sent = dropped = 0
    for i, m in enumerate(seq):
        if keep[i] or ids[i] in kept_turns:
            sent.append(m)
            if i < len(body):
                history_sent += 1
        else:
            dropped += 1
    return TrimResult(
        messages=sent,
        history_sent=history_sent,
        dropped_messages=dropped,
        dropped_turns=len(turn_cost) - len(kept_turns),
        replaced=len(history) - len(body),
        tokens=used,
        over_budget=over_budget,
    )


def bound(messages: Sequence[Message], max_messages: int) -> list[Message]:
    """`messages` with the oldest whole turns dropped until at most `max_messages` remain
    (what is stored stays a conversation an upstream accepts). System messages are kept,
    and so is the newest turn even on its own past the bound."""
    if len(messages) <= max_messages:
        return list(messages)
    ids = turn_ids(messages)
    per_turn: dict[int, int] = {}
    for i, m in enumerate(messages):
        if not is_system(m):
            per_turn[ids[i]] = per_turn.get(ids[i], 0) + 1
    excess = len(messages) - max_messages
    dropped: set[int] = set()
    for turn in sorted(per_turn)[:-1]:  # never the newest
        if excess <= 0:
            break
        dropped.add(turn)
        excess -= per_turn[turn]
    return [m for i, m in enumerate(messages) if is_system(m) or ids[i] not in dropped]
