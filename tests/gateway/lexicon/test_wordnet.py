"""WordNet 3.0 read from its own files (as `llm-gateway models pull` leaves them): base
forms, senses, and the relations the semantic verifier asks about."""

from __future__ import annotations

import pytest

from gateway.lexicon.relations import relation
from gateway.lexicon.wordnet import WordNet


def test_the_whole_database_is_indexed(wordnet: WordNet) -> None:
    assert len(wordnet) > 140_000  # lemmas over the four parts of speech


@pytest.mark.parametrize(
    ("word", "pos", "bases"),
    [
        ("largest", "a", ["large"]),  # detachment rule
        ("geese", "n", ["goose"]),  # exception list
        ("best", "a", ["best", "good"]),  # a word and its exception-list base
        ("running", "v", ["run"]),
        ("xyzzyq", "n", []),
    ],
)
def test_base_forms(wordnet: WordNet, word: str, pos: str, bases: list[str]) -> None:
    assert wordnet.lemmas(word, pos) == bases


def test_a_synset_is_read_at_its_byte_offset(wordnet: WordNet) -> None:
    """Offsets point into LF-terminated files: a CRLF copy would land mid-line."""
    gold = wordnet.senses("gold")
    assert gold and all("gold" in s.words for s in gold[:2])
    metal = next(s for s in gold if s.pos == "n")
    parents = [wordnet.synset(h) for h in metal.hypernyms]
    assert parents and all(p.pos == "n" and p.words for p in parents)


@pytest.mark.parametrize(
    ("x", "y", "kind"),
    [
        ("largest", "smallest", "opposite"),  # through base forms
        ("huge", "small", "opposite"),  # a satellite through its head (large)
        ("increase", "decrease", "opposite"),
        ("gold", "silver", "sibling"),  # noble metals
        ("autumn", "spring", "sibling"),  # seasons
        ("peru", "chile", "sibling"),
        ("days", "weeks", "measure"),  # different units
        ("lb", "kg", "measure"),
        ("km", "kilometers", "same"),
        ("buy", "purchase", "same"),
        ("biggest", "largest", "same"),
        ("autumn", "fall", "same"),
        ("car", "car", "same"),
        ("update", "change", None),  # a kind of the other: how people reword
        ("poem", "kubernetes", None),  # one word WordNet does not know
    ],
)
def test_relations(wordnet: WordNet, x: str, y: str, kind: str | None) -> None:
    assert relation(wordnet, x, y) == kind
    assert relation(wordnet, y, x) == kind  # symmetric
