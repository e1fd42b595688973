"""How two words relate in WordNet, in the few kinds the semantic cache's verifier needs
(policies/semantic_verify.py decides what each kind means for a cache hit):

- "same": one meaning shared (a synset in common, or one base form: "biggest"/"large"
  share large.a.01, "autumn"/"fall" share autumn.n.01);
- "opposite": antonyms, an adjective through its head ("huge" is similar to "large",
  whose antonym is "small");
- "sibling": two kinds of one thing ("gold"/"silver" under noble metal, "spring"/
  "autumn" under season);
- "measure": two different units or amounts ("days"/"weeks", "lb"/"kg", "cup"/"pint"):
  "a trip of 3 days" is not "a trip of 3 weeks";

Only each word's `SENSES` most frequent senses per part of speech are compared for
opposites, siblings and measures: rare senses relate nearly any two words ("python" and
"java" both have a rare sense under "programming language" but also under "snake" and
"island"), and a relation found through one of those would veto hits at random.
"""

from __future__ import annotations

from gateway.lexicon.wordnet import Synset, WordNet

SENSES = 2  # per part of speech and base form (tuned on the project's own pairs)
MEASURE = "n33615"  # measure.n.02: "how much there is or how many there are of something"


def relation(wordnet: WordNet, x: str, y: str) -> str | None:
    """ "same", "opposite", "sibling", "measure" or None (unrelated or unknown)."""
    if x == y:
        return "same"
    all_x, all_y = wordnet.senses(x), wordnet.senses(y)  # every sense: rewordings
    if not all_x or not all_y:
        return None
    if {s.key for s in all_x} & {s.key for s in all_y}:
        return "same"
    sx, sy = wordnet.senses(x, SENSES), wordnet.senses(y, SENSES)
    if _opposite(wordnet, sx, sy):
        return "opposite"
    parents_x = {h for s in sx for h in s.hypernyms}
    parents_y = {h for s in sy for h in s.hypernyms}
    if parents_x & parents_y:
        return "sibling"
    if _measure(wordnet, sx) and _measure(wordnet, sy):
        return "measure"
    return None


def noun_only(wordnet: WordNet, word: str) -> bool:
    """Whether WordNet knows `word` and only as a noun ("city", not "hidden")."""
    senses = wordnet.senses(word)
    return bool(senses) and all(s.pos == "n" for s in senses)


def _measure(wordnet: WordNet, senses: list[Synset]) -> bool:
    """Whether a noun sense is a unit or amount of something ("day", "week", "lb",
    "cup", "mile"): it descends from measure.n.02."""
    frontier = [s.key for s in senses if s.pos == "n"]
    seen: set[str] = set()
    while frontier:
        key = frontier.pop()
        if key == MEASURE:
            return True
        if key not in seen:
            seen.add(key)
            frontier += wordnet.synset(key).hypernyms
    return False


def _heads(wordnet: WordNet, senses: list[Synset]) -> set[str]:
    """The synsets themselves and, for satellite adjectives, the heads they hang from."""
    out = {s.key for s in senses}
    for s in senses:
        if s.satellite:
            out.update(s.similar)
    return out


def _opposite(wordnet: WordNet, sx: list[Synset], sy: list[Synset]) -> bool:
    heads_x, heads_y = _heads(wordnet, sx), _heads(wordnet, sy)
    antonyms_x = {a for k in heads_x for a in wordnet.synset(k).antonyms}
    antonyms_y = {a for k in heads_y for a in wordnet.synset(k).antonyms}
    return bool(antonyms_x & heads_y or antonyms_y & heads_x)
