from __future__ import annotations

from typing import Any

import pytest

from policies.context import (
    MESSAGE_OVERHEAD_TOKENS,
    bound,
    estimate_tokens,
    merge,
    trim,
    turn_ids,
)

Msg = dict[str, Any]


def sys(text: str = "be brief") -> Msg:
    return {"role": "system", "content": text}


def user(text: str) -> Msg:
    return {"role": "user", "content": text}


def bot(text: str) -> Msg:
    return {"role": "assistant", "content": text}


def calls(*names: str) -> Msg:
    tool_calls = [
        {"id": f"call_{n}", "type": "function", "function": {"name": n, "arguments": "{}"}}
        for n in names
    ]
    return {"role": "assistant", "content": None, "tool_calls": tool_calls}


def result(name: str) -> Msg:
    return {"role": "tool", "tool_call_id": f"call_{name}", "content": f"{name} result"}


def cost(*messages: Msg) -> int:
    return sum(estimate_tokens(m) for m in messages)


@pytest.mark.parametrize(
    ("message", "tokens"),
    [
        ({"role": "user", "content": ""}, 0),
        ({"role": "user", "content": None}, 0),
        ({"role": "user", "content": "abcd"}, 1),
        ({"role": "user", "content": "abcde"}, 2),  # rounded up
        (
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "abcd"},
                    {"type": "image_url", "image_url": {"url": "data:..." * 100}},
                    {"type": "text", "text": "efgh"},
                ],
            },
            2,
        ),
        (calls("abcd"), 1 + 1),  # the name and the arguments "{}" (2 chars, rounded up)
        ({"role": "user", "content": "abcd", "name": "abcd"}, 2),
    ],
)
def test_estimate_tokens_is_chars_over_four_plus_overhead(message: Msg, tokens: int) -> None:
    assert estimate_tokens(message) == tokens + MESSAGE_OVERHEAD_TOKENS


def test_turns_start_at_user_messages_and_keep_tool_calls_with_results() -> None:
    history = [bot("hi, ask me"), user("a"), calls("f", "g"), result("f"), result("g"), bot("x")]
    history += [user("b"), bot("y")]
    assert turn_ids(history) == [0, 1, 1, 1, 1, 1, 2, 2]


def test_everything_is_sent_when_it_fits() -> None:
    history = [sys(), user("one"), bot("uno"), user("two"), bot("dos")]
    new = [user("three")]
    out = trim(history, new, budget_tokens=10_000)
    assert out.messages == [*history, *new]
    assert (out.history_sent, out.dropped_messages, out.dropped_turns) == (5, 0, 0)
    assert out.tokens == cost(*history, *new)
    assert not out.over_budget


def test_the_oldest_turns_go_first_and_the_system_prompt_stays() -> None:
    history = [sys(), user("one"), bot("uno"), user("two"), bot("dos")]
    new = [user("three")]
    budget = cost(sys(), user("two"), bot("dos"), *new)  # room for exactly one earlier turn
    out = trim(history, new, budget)
    assert out.messages == [sys(), user("two"), bot("dos"), user("three")]
    assert (out.history_sent, out.dropped_messages, out.dropped_turns) == (3, 2, 1)
    assert out.tokens == budget


def test_one_token_short_of_a_turn_drops_it() -> None:
    history = [sys(), user("one"), bot("uno"), user("two"), bot("dos")]
    new = [user("three")]
    budget = cost(sys(), user("two"), bot("dos"), *new) - 1
    out = trim(history, new, budget)
    assert out.messages == [sys(), user("three")]
    assert (out.dropped_messages, out.dropped_turns) == (4, 2)


def test_a_turn_that_does_not_fit_stops_the_search() -> None:
    """An older, smaller turn is not sent without the newer one: no holes."""
    history = [user("a"), bot("b"), user("x" * 400), bot("y"), user("c"), bot("d")]
    new = [user("now")]
    budget = cost(user("a"), bot("b"), user("c"), bot("d"), *new) + 10
    out = trim(history, new, budget)
    assert out.messages == [user("c"), bot("d"), user("now")]


def test_a_tool_call_is_never_separated_from_its_results() -> None:
    turn = [user("weather?"), calls("f", "g"), result("f"), result("g"), bot("sunny")]
    history = [sys(), user("hi"), bot("hello"), *turn]
    new = [user("and tomorrow?")]
    budget = cost(sys(), *turn, *new)
    assert trim(history, new, budget).messages == [sys(), *turn, *new]
    short = trim(history, new, budget - 1)  # the whole tool turn goes, not half of it
    assert short.messages == [sys(), *new]
    assert short.dropped_turns == 2


def test_new_tool_results_keep_the_stored_call_they_answer() -> None:
    """A client sends only the tool result; the assistant's call is in the history."""
    history = [sys(), user("old"), bot("older"), user("weather?"), calls("f")]
    new = [result("f")]
    out = trim(history, new, budget_tokens=1)
    assert out.messages == [sys(), user("weather?"), calls("f"), result("f")]
    assert out.over_budget
    assert (out.history_sent, out.dropped_messages) == (3, 2)


def test_all_system_and_developer_messages_are_kept_where_they_are() -> None:
    dev = {"role": "developer", "content": "use tools"}
    note = sys("the user is now on mobile")
    history = [sys(), dev, user("one"), note, bot("uno"), user("two"), bot("dos")]
    new = [user("three")]
    budget = cost(sys(), dev, note, user("two"), bot("dos"), *new)
    out = trim(history, new, budget)
    # turn one is dropped, the system note inside it is not
    assert out.messages == [sys(), dev, note, user("two"), bot("dos"), user("three")]
    assert (out.dropped_messages, out.dropped_turns) == (2, 1)


def test_a_new_system_prompt_replaces_the_stored_ones_and_goes_first() -> None:
    history = [sys("old"), user("one"), sys("old note"), bot("uno")]
    new = [sys("new"), user("two")]
    out = trim(history, new, budget_tokens=10_000)
    assert out.messages == [sys("new"), user("one"), bot("uno"), user("two")]
    assert (out.history_sent, out.replaced, out.dropped_messages) == (2, 2, 0)
    assert merge(history, new) == out.messages


def test_the_pinned_part_is_sent_even_past_the_budget() -> None:
    """The user's new message is never cut: the upstream reports the overflow itself."""
    history = [sys(), user("one"), bot("uno")]
    new = [user("x" * 1000)]
    out = trim(history, new, budget_tokens=10)
    assert out.messages == [sys(), *new]
    assert out.over_budget
    assert out.tokens == cost(sys(), *new)


@pytest.mark.parametrize("budget", [-100, 0, 1])
def test_no_budget_sends_only_the_pinned_part(budget: int) -> None:
    history = [sys(), user("one"), bot("uno")]
    out = trim(history, [user("two")], budget)
    assert out.messages == [sys(), user("two")]


def test_empty_history_and_empty_new() -> None:
    assert trim([], [user("hi")], 100).messages == [user("hi")]
    out = trim([sys(), user("a"), bot("b")], [], 10_000)
    assert out.messages == [sys(), user("a"), bot("b")]


def test_messages_are_the_callers_own_objects() -> None:
    history, new = [user("one"), bot("uno")], [user("two")]
    out = trim(history, new, 10_000)
    assert all(a is b for a, b in zip(out.messages, [*history, *new], strict=True))


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (100, [sys(), user("1"), bot("1"), user("2"), bot("2"), user("3"), bot("3")]),
        (7, [sys(), user("1"), bot("1"), user("2"), bot("2"), user("3"), bot("3")]),
        (6, [sys(), user("2"), bot("2"), user("3"), bot("3")]),
        (5, [sys(), user("2"), bot("2"), user("3"), bot("3")]),
        (2, [sys(), user("3"), bot("3")]),  # the newest turn stays, even past the bound
    ],
)
def test_bound_drops_the_oldest_whole_turns(limit: int, expected: list[Msg]) -> None:
    messages = [sys(), user("1"), bot("1"), user("2"), bot("2"), user("3"), bot("3")]
    assert bound(messages, limit) == expected
