"""What two questions differ by, word for word, once rewordings are set aside: the
semantic verifier's view of a near-duplicate pair (policies/semantic_verify.py).

The content words one question has and the other lacks are paired up through a word
relation the caller's lexicon supplies (WordNet's, gateway/lexicon/relations.py):
- words with one meaning ("biggest"/"largest", "buy"/"purchase") cancel out;
- a pair of opposites, siblings or different measures in the same place of both
  ("largest"/"smallest", "gold"/"silver", "autumn"/"spring", "days"/"weeks") is a
  contrast: the questions ask about different things however close their embeddings
  are (a word for its kind, "update" for "change", "word" for "synonym", is how people
  reword: not a contrast);
- a single word added inside the other question narrows it ("delete all [dangling]
  Docker images"), unless it can only be a noun ("the capital [city] of France");
- different words after a shared "in", "as", "for" or "to" are another audience or form
  ("explain it to a baseball fan" / "to a toddler", "in one sentence" / "in detail");
- one word left on each side is a substitution the caller scores by embedding.

Pure: the lexicon and the embedding score come in from the caller.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Protocol


class Lexicon(Protocol):
    """What the verifier asks of a dictionary (gateway/lexicon/: WordNet)."""

    def relation(self, x: str, y: str) -> str | None:
        """(word in one question, word in the other) -> "same", "opposite", "sibling",
        "measure" (two different units or amounts), or None."""

    def noun_only(self, word: str) -> bool:
        """Whether every sense the dictionary knows of `word` is a noun ("city")."""


Opcodes = Sequence[tuple[str, int, int, int, int]]  # difflib's, per aligned span

CONTRASTS = frozenset({"opposite", "sibling", "measure"})
# A contrast is looked for only between words in the same place of the two questions
# (aligned replaced spans of at most this many words a side): in a question reworded
# throughout, unrelated words of the two would pair up as siblings by chance ("speed" /
# "travel"), and vetoing those would cost paraphrases.
MAX_SPAN = 2


@dataclass(frozen=True, slots=True)
class Difference:
    only_a: Counter[str]  # content words of `a` with no same-meaning word in `b`
    only_b: Counter[str]
    contrast: tuple[str, str, str] | None  # (word of a, word of b, relation)
    swapped: tuple[str, str] | None  # the pair when one word was swapped for another
    # The word when the one difference is a word added inside the other question ("delete
    # all [dangling] Docker images", "the main [economic] causes"): a narrower question.
    inserted: str | None


def difference(
    content_a: tuple[str, ...], content_b: tuple[str, ...], lexicon: Lexicon | None
) -> Difference:
    """Content words of each side minus the other's, with same-meaning pairs cancelled,
    and the first contrast between aligned words."""
    only_a = Counter(content_a) - Counter(content_b)
    only_b = Counter(content_b) - Counter(content_a)
    swapped = None
    if sum(only_a.values()) == 1 and sum(only_b.values()) == 1:
        swapped = next(iter(only_a)), next(iter(only_b))
    opcodes = SequenceMatcher(a=content_a, b=content_b, autojunk=False).get_opcodes()
    inserted = _inserted_inside(content_a, content_b, opcodes)
    if inserted is not None and lexicon is not None and lexicon.noun_only(inserted):
        inserted = None  # "the capital [city] of France": a noun naming what is there
    if lexicon is None or not only_a or not only_b:
        return Difference(only_a, only_b, None, swapped, inserted)
    contrast = _first_contrast(content_a, content_b, opcodes, lexicon)
    for x in list(only_a):
        for y in list(only_b):
            if only_a[x] and only_b[y] and lexicon.relation(x, y) == "same":
                only_a[x] -= 1
                only_b[y] -= 1
    only_a, only_b = +only_a, +only_b  # drop the cancelled words
    if swapped is not None and not only_a:
        swapped = None  # the swap was a synonym: nothing left to score
    return Difference(only_a, only_b, contrast, swapped, inserted)


def _first_contrast(
    content_a: tuple[str, ...], content_b: tuple[str, ...], opcodes: Opcodes, lexicon: Lexicon
) -> tuple[str, str, str] | None:
    for tag, i1, i2, j1, j2 in opcodes:
        if tag != "replace" or i2 - i1 > MAX_SPAN or j2 - j1 > MAX_SPAN:
            continue
        span_a, span_b = content_a[i1:i2], content_b[j1:j2]
        # Spans of one length pair word for word ("engineering position" / "engineer
        # job"); otherwise every word of one with every word of the other.
        if len(span_a) == len(span_b):
            candidates = list(zip(span_a, span_b, strict=True))
        else:
            candidates = [(x, y) for x in span_a for y in span_b]
        for x, y in candidates:
            kind = lexicon.relation(x, y)
            if kind in CONTRASTS:
                return x, y, kind
    return None


# Prepositions that introduce who an answer is for and what shape it takes ("explain it
# [to a toddler]", "describe it [in one sentence]", "[as a table]", "[for a child]").
FRAMING_PREPOSITIONS = frozenset("in as for to".split())


def reframed(
    frame_a: tuple[str, ...],
    frame_b: tuple[str, ...],
    lexicon: Lexicon | None,
    stop: frozenset[str],
) -> tuple[str, str] | None:
    """The two phrases when the words after one shared framing preposition differ and
    none of them are synonyms ("in one sentence" / "in detail", "to a baseball fan" / "to
    a toddler"): the same topic for another audience or in another form. "how to X" is an
    infinitive, not a preposition: left to the other checks."""
    opcodes = SequenceMatcher(a=frame_a, b=frame_b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in opcodes:
        if tag != "replace" or i1 == 0 or j1 == 0 or frame_a[i1 - 1] != frame_b[j1 - 1]:
            continue
        before = frame_a[i1 - 1]
        if before not in FRAMING_PREPOSITIONS or (
            before == "to" and "how" in frame_a[i1 - 2 : i1 - 1]
        ):
            continue
        xa = [w for w in frame_a[i1:i2] if w not in stop]
        xb = [w for w in frame_b[j1:j2] if w not in stop]
        if not xa or not xb:
            continue
        if lexicon is not None and any(lexicon.relation(x, y) == "same" for x in xa for y in xb):
            continue
        return " ".join(xa), " ".join(xb)
    return None


def _inserted_inside(a: tuple[str, ...], b: tuple[str, ...], opcodes: Opcodes) -> str | None:
    """The word one sequence has between two words both share, when that is their only
    difference. Words added at either end are left alone: that is where rewordings put
    their framing ("formula to convert ...", "... - how?")."""
    changes = [op for op in opcodes if op[0] != "equal"]
    if len(changes) != 1:
        return None
    tag, i1, i2, j1, j2 = changes[0]
    if tag == "insert" and j2 - j1 == 1 and j1 > 0 and j2 < len(b):
        return b[j1]
    if tag == "delete" and i2 - i1 == 1 and i1 > 0 and i2 < len(a):
        return a[i1]
    return None
