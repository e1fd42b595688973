"""StopStringMatcher: held-back partial matches, chunking independence, OpenAI semantics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.tokenizer.stop_strings import StopStringMatcher


def _chunkings(text: str) -> Iterator[tuple[str, list[str]]]:
    """The same text cut in many ways: whole, per character, fixed and uneven chunk sizes."""
    yield "whole", [text]
    yield "chars", list(text)
    for size in (2, 3, 5, 7):
        yield f"size{size}", [text[i : i + size] for i in range(0, len(text), size)]
    # Uneven chunks (1, 2, 3, 1, 2, 3, ...) and the reverse pattern, to shift every boundary.
    for pattern in ((1, 2, 3), (4, 1, 2)):
        chunks, i, k = [], 0, 0
        while i < len(text):
            n = pattern[k % len(pattern)]
            chunks.append(text[i : i + n])
            i, k = i + n, k + 1
        yield f"uneven{pattern}", chunks
    # Every single split point, with an empty feed in between.
    for cut in range(1, len(text)):
        yield f"cut{cut}", [text[:cut], "", text[cut:]]


def _run(stops: list[str], chunks: list[str]) -> tuple[str, bool, list[str]]:
    """Feeds the chunks like the engine does; returns (all text emitted, matched, per-feed)."""
    m = StopStringMatcher(stops)
    emitted: list[str] = []
    for chunk in chunks:
        out, matched = m.feed(chunk)
        emitted.append(out)
        if matched:
            return "".join(emitted), True, emitted
    emitted.append(m.flush())
    return "".join(emitted), False, emitted


# (stops, generated text, expected client-visible text, expected matched)
CASES = [
    pytest.param(["STOP"], "hello STOP world", "hello ", True, id="middle"),
    pytest.param(["STOP"], "STOP and more", "", True, id="at-very-start"),
    pytest.param(["STOP"], "the end STOP", "the end ", True, id="at-very-end"),
    pytest.param(["STOP"], "no match here", "no match here", False, id="no-match"),
    pytest.param(["STOP"], "STSTOSTOP!", "STSTO", True, id="false-starts-then-match"),
    pytest.param(["STOP"], "ST ST STO STOPP", "ST ST STO ", True, id="partials-released"),
    pytest.param(["STOP"], "ends with STO", "ends with STO", False, id="trailing-partial"),
    pytest.param(["aab"], "aaab", "a", True, id="self-overlapping-prefix"),
    pytest.param(["abab"], "abaabababab", "aba", True, id="periodic-stop"),
    pytest.param(
        ["\n\n"],
        "line one\nline two\n\nline three",
        "line one\nline two",
        True,
        id="double-newline",
    ),
    pytest.param(["</s>", "###"], "answer ### more </s>", "answer ", True, id="two-stops-first"),
    pytest.param(["</s>", "###"], "answer </s> more ###", "answer ", True, id="two-stops-second"),
    pytest.param(
        ["xyz", "END"],
        "partial xy then END",
        "partial xy then ",
        True,
        id="two-stops-partial-of-other",
    ),
    pytest.param(["日本", "🙂"], "naïve café 日本語", "naïve café ", True, id="non-ascii"),
    pytest.param(["🙂"], "smile 🙂 again", "smile ", True, id="emoji"),
    pytest.param(["x"], "abcxdef", "abc", True, id="single-char-stop"),
    pytest.param([], "anything STOP at all", "anything STOP at all", False, id="no-stops"),
]


@pytest.mark.parametrize(("stops", "text", "expected", "matched"), CASES)
def test_result_does_not_depend_on_chunking(
    stops: list[str], text: str, expected: str, matched: bool
) -> None:
    for name, chunks in _chunkings(text):
        assert "".join(chunks) == text
        got, got_matched, per_feed = _run(stops, chunks)
        assert (got, got_matched) == (expected, matched), name
        # Nothing sent is ever taken back, and no stop string is ever sent, even in part
        # across two deltas.
        sent = ""
        for piece in per_feed:
            sent += piece
            assert expected.startswith(sent), name
            assert not any(s in sent for s in stops), name


def test_partial_match_is_held_then_released_when_it_diverges() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.feed("hello S") == ("hello ", False)
    assert m.feed("T") == ("", False)
    assert m.feed("O") == ("", False)
    # "STOx" cannot start a stop string any more: all of it comes out at once.
    assert m.feed("x") == ("STOx", False)
    assert m.held == ""


def test_divergence_keeps_back_a_new_partial() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.feed("ST") == ("", False)
    # "STS": the first "ST" is released, the last "S" may still start "STOP".
    assert m.feed("S") == ("ST", False)
    assert m.feed("TOP tail") == ("", True)


def test_held_text_is_released_by_flush() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.feed("the end ST") == ("the end ", False)
    assert m.feed("") == ("", False)  # an empty feed neither releases nor loses it
    assert m.flush() == "ST"
    assert m.flush() == ""  # flushing empties the buffer
    assert m.feed("more") == ("more", False)


def test_flush_without_anything_held_is_empty() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.feed("nothing suspicious") == ("nothing suspicious", False)
    assert m.flush() == ""


def test_stop_at_very_start_fed_character_by_character() -> None:
    m = StopStringMatcher(["STOP"])
    assert [m.feed(c) for c in "STO"] == [("", False)] * 3
    assert m.feed("P") == ("", True)


def test_stop_completed_by_a_chunk_that_also_carries_text_after_it() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.feed("abc ST") == ("abc ", False)
    # Text after the stop string is dropped; the held "ST" is not emitted.
    assert m.feed("OP trailing words") == ("", True)


def test_earliest_match_wins_within_one_chunk() -> None:
    m = StopStringMatcher(["world", "hello", "lo w"])
    # "hello" starts at 4, "lo w" at 7, "world" at 10: the earliest start wins.
    assert m.feed("say hello world") == ("say ", True)


def test_earliest_match_wins_when_the_later_stop_is_listed_first() -> None:
    m = StopStringMatcher(["ZZ", "AA"])
    assert m.feed("xx AA yy ZZ") == ("xx ", True)


def test_longest_partial_among_several_stops_is_held() -> None:
    m = StopStringMatcher(["abcd", "cdef"])
    # Suffix "c" could start "cdef", but "abc" could start "abcd": the longer one is held.
    assert m.feed("xxabc") == ("xx", False)
    assert m.held == "abc"
    # "abcde": "abcd" matched (starting at 0 of the held text).
    assert m.feed("de") == ("", True)


def test_no_stops_is_a_passthrough() -> None:
    m = StopStringMatcher([])
    for piece in ["", "S", "STOP", "\n\n", "🙂"]:
        assert m.feed(piece) == (piece, False)
    assert m.held == ""
    assert m.flush() == ""
