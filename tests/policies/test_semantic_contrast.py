"""What two questions differ by once rewordings cancel (the relation is a table here:
the verifier's own logic, apart from WordNet)."""

from __future__ import annotations

from collections import Counter

from policies.semantic_contrast import difference, reframed

TABLE = {
    ("largest", "smallest"): "opposite", ("gold", "silver"): "sibling",
    ("biggest", "largest"): "same", ("speed", "travel"): "sibling",
}  # fmt: skip


class Table:
    """A lexicon of a few words."""

    def relation(self, x: str, y: str) -> str | None:
        return TABLE.get((x, y)) or TABLE.get((y, x))

    def noun_only(self, word: str) -> bool:
        return word in {"city", "planet"}


relate = Table()


def test_a_word_in_the_same_place_swapped_for_its_opposite_is_a_contrast() -> None:
    d = difference(("largest", "planet"), ("smallest", "planet"), relate)
    assert d.contrast == ("largest", "smallest", "opposite")
    assert d.swapped == ("largest", "smallest")


def test_synonyms_cancel() -> None:
    d = difference(("biggest", "planet", "solar"), ("largest", "planet", "solar"), relate)
    assert d.contrast is None
    assert d.only_a == Counter() and d.only_b == Counter()
    assert d.swapped is None  # nothing left for the embedding to score


def test_words_far_apart_are_not_compared() -> None:
    """In a question reworded throughout, chance siblings do not veto."""
    a = ("speed", "light", "vacuum")  # "the speed of light in a vacuum"
    b = ("light", "vacuum", "travel")  # "how fast does light in a vacuum travel"
    assert difference(a, b, relate).contrast is None
    # ...and a replaced span longer than two words a side is a rewording, not a swap.
    a = ("speed", "light")
    b = ("quick", "travel", "distance", "light")
    assert difference(a, b, relate).contrast is None
    assert difference(("speed", "light"), ("travel", "light"), relate).contrast is not None


def test_without_a_relation_only_the_plain_difference() -> None:
    d = difference(("symbol", "gold"), ("symbol", "silver"), None)
    assert d.contrast is None and d.swapped == ("gold", "silver")
    assert d.only_a == Counter({"gold": 1}) and d.only_b == Counter({"silver": 1})


def test_a_word_added_inside_is_reported_and_one_at_an_end_is_not() -> None:
    shared = ("delete", "docker", "image")
    inside = ("delete", "dangling", "docker", "image")
    assert difference(shared, inside, None).inserted == "dangling"
    assert difference(inside, shared, None).inserted == "dangling"
    assert difference(shared, ("formula", *shared), None).inserted is None  # framing
    assert difference(shared, (*shared, "quickly"), None).inserted is None
    # With a lexicon, a word that can only be a noun names what is there.
    assert difference(("capital", "france"), ("capital", "city", "france"), relate).inserted is None
    two_changes = ("delete", "dangling", "docker", "image", "now")
    assert difference(shared, two_changes, None).inserted is None


def test_another_audience_or_form_after_the_same_preposition() -> None:
    stop = frozenset({"a", "how", "to", "in", "one"})
    one_sentence = ("describe", "it", "in", "one", "sentence")
    in_detail = ("describe", "it", "in", "detail")
    assert reframed(one_sentence, in_detail, None, stop) == ("sentence", "detail")
    # "how to" is an infinitive; a synonym after the preposition is a rewording.
    assert reframed(("how", "to", "boil", "egg"), ("how", "to", "cook", "egg"), None, stop) is None
    assert reframed(("biggest", "in", "planet"), ("largest", "in", "planet"), None, stop) is None
    assert reframed(("size", "in", "biggest"), ("size", "in", "largest"), relate, stop) is None
