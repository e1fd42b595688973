"""The semantic cache's second look: after the vector search found a cached question
close to the new one, decide whether the two really ask the same thing.

Sentence embeddings are built to score topical closeness, and the errors that cost a
cache its users' trust are exactly the ones they score high: "Does the Moon orbit the
Earth?" / "Does the Earth orbit the Moon?" (0.99), "turn on dark mode" / "turn off dark
mode" (0.93). Each check below looks for one such difference and vetoes the hit:

- numbers: the multiset of numbers (digits, number words, "5km" as 5 km) must be equal;
- negation: the count of negations ("not", "without", "stop", "avoid", ...) must have the
  same parity, and no word may be swapped for its negated form (subscribe/unsubscribe);
- polarity: opposite words on one axis (on/off, enable/disable, increase/decrease, ...)
  must not differ when both questions use that axis;
- key terms: names, acronyms, quoted text and code-like tokens (capitalized mid-sentence,
  `snake_case`, `a.b`, `v3`) of each question must appear in the other (common short
  names mapped first: js -> javascript, k8s -> kubernetes);
- task and language: what the user wants made (translate vs summarize, a poem vs a story)
  and in which language (Python vs JavaScript) must agree when both questions name one;
- order: two phrases trading places around the same middle ("Is Everest taller than
  K2" / "Is K2 taller than Everest") is a reversed relation;
- scope: one question is the other plus a narrowing phrase ("... for free") or a word
  added inside ("all [hidden] files");
- contrast and format (policies/semantic_contrast.py, with the caller's lexicon,
  WordNet): opposites, siblings or different measures in the same place ("largest"/
  "smallest", "gold"/"silver", "3 days"/"3 weeks"), or another audience or form after
  the same preposition ("in one sentence" / "in detail");
- a single swapped content word must not be unrelated by the caller's word similarity
  (embedding cosine: "poem"/"story" 0.26, "python"/"javascript" 0.31 are vetoed;
  "buy"/"purchase" 0.87 passes).

Lexicons and thresholds were set on bench/data/semantic_pairs.jsonl (even lines) and
semantic_pairs_contrast.jsonl, never on semantic_pairs_heldout.jsonl (bench/cache.py).

Pure text processing: no I/O, no model. The word similarity comes in as a number the
caller computed for the pair `compare()` names, the dictionary as an object.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from policies.semantic_contrast import Difference, Lexicon, difference, reframed

# A substituted word pair scoring below this (embedding cosine) is a different thing,
# not a rewording.
SYNONYM_SIMILARITY = 0.5

_WORD = re.compile(
    r"\d+(?:\.\d+)?[A-Za-z][\w]*|[A-Za-z°][A-Za-z0-9_+#'.\-]*[A-Za-z0-9_+#]|[A-Za-z]|\d+(?:[.,]\d+)*"
)
_QUOTED = re.compile(r"(?:^|(?<=[\s(:]))([\"`'])([^\"`]{2,}?)\1(?![A-Za-z])")
# "France's capital" -> "capital of France", but not "what's", "it's", "let's".
_POSSESSIVE = re.compile(
    r"\b(?!(?:what|that|it|there|here|who|where|how|let|he|she|this)'s\b)"
    r"([A-Za-z][\w.-]*)'s\s+([A-Za-z][\w-]*)",
    re.I,
)
_TIME = re.compile(r"\b(\d{1,2}):00\b")  # "3:00" is the 3 o'clock of "3am"
_UNITS = frozenset(
    "am pm k m km kg g mb gb tb kb ms s h min mph kmh c f l ml cm mm in ft lb lbs oz x".split()
)
# Short names users write for the same thing (both sides are mapped before comparing).
_ALIASES = {
    "js": "javascript", "ts": "typescript", "py": "python", "k8s": "kubernetes",
    "postgres": "postgresql", "psql": "postgresql", "us": "united states",
    "usa": "united states", "uk": "united kingdom", "2fa": "two-factor",
    "°c": "celsius", "°f": "fahrenheit", "db": "database", "repo": "repository",
}  # fmt: skip
_SYMMETRIC = re.compile(r"\b([\w.+#-]+)\s+(and|or|vs\.?|versus|&)\s+([\w.+#-]+)\b", re.I)

_CONTRACTIONS = {
    "can't": "can not", "cannot": "can not", "won't": "will not", "shan't": "shall not",
    "n't": " not", "'re": " are", "'ve": " have", "'ll": " will", "'d": " would",
    "'m": " am", "'s": " is",
}  # fmt: skip

# Negations, and verbs that negate what follows ("stop showing", "avoid eating").
_NEGATIONS = frozenset(
    "not no never none nobody nothing neither nor without nowhere stop avoid prevent".split()
)

_NUMBER_WORDS: dict[str, float] = {
    w: float(i)
    for i, w in enumerate(
        "zero _ two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
# "one" is left out: "one pound" and "a pound" ask the same, and "which one" has no number.
del _NUMBER_WORDS["_"]
_NUMBER_WORDS.update(
    {"thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
     "ninety": 90, "hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9,
     "dozen": 12, "half": 0.5, "twice": 2, "double": 2, "triple": 3}
)  # fmt: skip

# axis -> (words on one side, words on the other)
_POLARITY: dict[str, tuple[str, str]] = {
    "on": ("on enable enabled enabling activate activated unmute show", "off disable disabled "
           "disabling deactivate deactivated mute hide"),
    "more": ("increase increasing raise more higher faster bigger larger longer grow "
             "maximum max most upgrade", "decrease decreasing reduce lower less fewer slower "
             "smaller shorter shrink minimum min least downgrade"),
    "add": ("add insert include install append create", "remove delete exclude uninstall "
            "drop destroy"),
    "allow": ("allow allowed permit permitted legal safe", "deny denied forbid forbidden "
              "block blocked ban banned illegal unsafe prohibited"),
    "start": ("start begin launch", "stop end kill halt terminate"),
    "open": ("open unlock", "close closed lock"),
    "in": ("import upload push encode encrypt compress zip login", "export download pull "
           "decode decrypt decompress unzip logout"),
    "buy": ("buy purchase", "sell"),
    "before": ("before prior earlier", "after later"),
    "above": ("above over", "below under"),
    "pro": ("pros advantages benefits strengths best", "cons disadvantages drawbacks "
            "weaknesses worst"),
    "true": ("true", "false"),
    "win": ("win won", "lose lost"),
    "hot": ("hot warm heat", "cold cool"),
    "first": ("first", "last"),
    "accept": ("accept accepted approve", "reject rejected refuse decline"),
    "ascending": ("ascending asc", "descending desc"),
}  # fmt: skip
_POLE = {w: (axis, sign) for axis, sides in _POLARITY.items() for sign in (0, 1)
         for w in sides[sign].split()}  # fmt: skip

# What the user wants made or done with a text, by kind (words of one kind are the
# same task: "explain" / "describe").
_TASK_KINDS = {
    "translate": "translate translation",
    "summarize": "summarize summary summarise tldr",
    "explain": "explain explanation describe",
    "example": "example examples",
    "fix": "fix debug repair",
    "test": "test tests unittest",
    "document": "docs documentation docstring document",
    "annotate": "hints annotate annotations",
    "refactor": "refactor rewrite restructure",
    "optimize": "optimize speed",
    "validate": "validate check verify",
    "extract": "extract parse",
    "poem": "poem haiku limerick",
    "story": "story",
    "essay": "essay",
    "joke": "joke",
    "song": "song lyrics",
    "email": "email letter",
    "tweet": "tweet",
    "title": "title headline slogan",
    "outline": "outline",
    "table": "table chart diagram",
    "quiz": "quiz",
    "proofread": "proofread",
    "recipe": "recipe",
    "itinerary": "itinerary",
}
_TASKS = {w: kind for kind, words in _TASK_KINDS.items() for w in words.split()}
# ...and in which language.
_LANGUAGES = frozenset(
    """python javascript typescript java rust golang ruby php swift kotlin c# c++ cpp bash
    shell powershell sql html css french spanish german italian japanese chinese korean
    portuguese russian arabic hindi dutch english""".split()
)

_ARTICLES = frozenset("a an the please pls plz".split())
_STOP = frozenset(
    """a an the is are was were be been being am do does did doing have has had having i me
    my mine you your yours we us our they them their it its this that these those what which
    who whom whose how why when where can could would should will shall may might must to of
    in for by with at from as into about please pls plz tell know give help want need like
    just really some any there here so if then than also get got make way ways im id ive
    hey hi hello thanks thank and or but""".split()
)


@dataclass(frozen=True, slots=True)
class Analysis:
    words: tuple[str, ...]  # lower-cased, contractions expanded, possessives as "of"
    frame: tuple[str, ...]  # words without articles: the order relations are read in
    content: tuple[str, ...]  # words minus stop words, symmetric pairs in canonical order
    numbers: Counter[float]
    negations: int
    poles: dict[str, frozenset[int]]
    terms: frozenset[str]  # names, acronyms, code-like tokens (lower-cased)
    tasks: frozenset[str]
    languages: frozenset[str]


def analyse(text: str) -> Analysis:
    quoted = [m.group(2) for m in _QUOTED.finditer(text)]
    text = _POSSESSIVE.sub(r"\2 of \1", text)
    text = _TIME.sub(r"\1", text)
    raw = _WORD.findall(text)
    # Terms are compared in the same word form as the text they are looked up in.
    terms = {" ".join(_words(q)) for q in quoted}
    for i, w in enumerate(raw):
        if _is_term(w, first=i == 0 or raw[i - 1].endswith((".", "?", "!"))):
            terms.add(" ".join(_words(w)))
    terms.discard("")
    words = tuple(_words(text))
    numbers: Counter[float] = Counter()
    for w in words:
        value = _number(w)
        if value is not None:
            numbers[value] += 1
    poles: dict[str, set[int]] = {}
    for w in words:
        pole = _POLE.get(w)
        if pole is not None:
            poles.setdefault(pole[0], set()).add(pole[1])
    content = tuple(_stem(w) for w in words if w not in _STOP and _number(w) is None)
    return Analysis(
        words=words,
        frame=tuple(_stem(w) for w in words if w not in _ARTICLES),
        content=content,
        numbers=numbers,
        negations=sum(w in _NEGATIONS for w in words),
        poles={k: frozenset(v) for k, v in poles.items()},
        terms=frozenset(terms),
        tasks=frozenset(_TASKS[w] for w in words if w in _TASKS),
        languages=frozenset(w for w in words if w in _LANGUAGES),
    )


def _words(text: str) -> list[str]:
    """Lower-cased words, contractions expanded, symmetric pairs ordered, aliases mapped,
    hyphenated words split, a number glued to its unit ("5km") split from it."""
    lowered = text.lower()
    for k, v in _CONTRACTIONS.items():
        lowered = lowered.replace(k, v)
    lowered = _SYMMETRIC.sub(lambda m: " ".join(sorted((m.group(1), m.group(3)))), lowered)
    out: list[str] = []
    for w in _WORD.findall(lowered):
        w = _alias(w.rstrip("."))
        glued = re.fullmatch(r"(\d+(?:\.\d+)?)([a-z]+)", w)
        if glued and glued.group(2) in _UNITS:
            out += [glued.group(1), glued.group(2)]
        elif "-" in w and not any(c.isdigit() for c in w):
            out += [p for p in w.split("-") if p]
        else:
            out += w.split()  # an alias may be two words
    return out


def _alias(word: str) -> str:
    return _ALIASES.get(word, word)


def _is_term(word: str, first: bool) -> bool:
    if any(c in word for c in "_#+") or re.search(r"[a-z]\.[a-z]", word):
        return True  # snake_case, C#, C++, a.b
    if re.search(r"[A-Za-z]\d|\d[A-Za-z]", word):
        return True  # v3, gpt4, 4k
    if len(word) > 1 and word.isupper():
        return True  # acronyms
    return not first and word[:1].isupper() and word.lower() not in _STOP and word != "I"


def _number(word: str) -> float | None:
    if word[:1].isdigit():
        try:
            return float(word.replace(",", ""))
        except ValueError:
            return None  # versions like 3.12.1: compared as terms (the text itself)
    value = _NUMBER_WORDS.get(word)
    return None if value is None else float(value)


def _stem(word: str) -> str:
    """Just enough to make "orbits"/"orbit" and "files"/"file" the same word."""
    for suffix in ("ies", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


@dataclass(frozen=True, slots=True)
class Verdict:
    same: bool
    reason: str  # which check vetoed ("" when same)


def compare(a: Analysis, b: Analysis, lexicon: Lexicon | None = None) -> Difference:
    """What `b`'s content words differ from `a`'s by (policies/semantic_contrast.py). Its
    `swapped` pair (one word swapped for a non-synonym) is what the caller scores by
    embedding cosine for `verify`, which takes this same Difference back."""
    return difference(a.content, b.content, lexicon)


def verify(
    a: Analysis,
    b: Analysis,
    substitution_similarity: float | None = None,
    lexicon: Lexicon | None = None,
    diff: Difference | None = None,
) -> Verdict:
    """Whether cached question `a` and new question `b` ask the same thing (`lexicon`:
    how words relate; `diff`: `compare(a, b, lexicon)` when the caller has it)."""
    if a.numbers != b.numbers:
        return Verdict(False, "numbers")
    if a.negations % 2 != b.negations % 2:
        return Verdict(False, "negation")
    for axis in a.poles.keys() & b.poles.keys():
        if a.poles[axis] != b.poles[axis]:
            return Verdict(False, "polarity")
    if not _terms_shared(a, b) or not _terms_shared(b, a):
        return Verdict(False, "terms")
    if a.tasks and b.tasks and a.tasks != b.tasks:
        return Verdict(False, "task")
    if a.languages and b.languages and a.languages != b.languages:
        return Verdict(False, "language")
    if _swapped(a.frame, b.frame) or _swapped(a.words, b.words):
        return Verdict(False, "order")  # the second: "is every square a rectangle"
    diff = diff or compare(a, b, lexicon)
    only_a, only_b = diff.only_a, diff.only_b
    if any(_negated_form(x, y) for x in only_a for y in only_b):
        return Verdict(False, "negation")  # subscribe / unsubscribe, sensitive / insensitive
    if diff.contrast is not None:
        return Verdict(False, "contrast")  # largest / smallest, gold / silver
    if reframed(a.frame, b.frame, lexicon, _STOP) is not None:
        return Verdict(False, "format")  # "in one sentence" / "in detail"
    if _adds_qualifier(a, b, only_a, only_b) or (diff.inserted not in (None, *_FRAMING)):
        return Verdict(False, "scope")  # "... for free", "... in 2020", "all [hidden] files"
    if substitution_similarity is not None and substitution_similarity < SYNONYM_SIMILARITY:
        return Verdict(False, "substitution")
    return Verdict(True, "")


def _swapped(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether `b` is `a` with two phrases trading places around something that stays
    between them ("Is Everest taller than K2" / "Is K2 taller than Everest", "km to miles"
    / "miles to km"): a reversed relation. Symmetric pairs ("X or Y") were put in one
    order before; a phrase moved elsewhere without a partner is a rewording."""
    if len(a) != len(b) or a == b or Counter(a) != Counter(b):
        return False
    start = 0
    while a[start] == b[start]:
        start += 1
    end = 0
    while a[-1 - end] == b[-1 - end]:
        end += 1
    ma, mb = a[start : len(a) - end], b[start : len(b) - end]
    n = len(ma)
    for lx in range(1, n - 1):  # ma = X Y Z, mb = Z Y X, with Y not empty
        if ma[:lx] != mb[n - lx :]:
            continue
        for lz in range(1, n - lx):
            if ma[n - lz :] == mb[:lz] and ma[lx : n - lz] == mb[lz : n - lx]:
                return True
    return False


# Words that frame a question without narrowing it ("explain X" / "what is X").
_FRAMING = frozenset(
    """explain explanation describe purpose mean meaning form keyword command function work
    happen use used definition define difference differ different exactly actually thing
    something stuff show walk through step steps way ok okay best correct proper properly
    command tell say name called call sentence text""".split()
)
_PREPOSITIONS = frozenset(
    "for during in on over with without under after before since until within at".split()
)


def _adds_qualifier(a: Analysis, b: Analysis, only_a: Counter[str], only_b: Counter[str]) -> bool:
    """Whether one question is the other plus a prepositional phrase that narrows it
    ("deploy a next.js app" / "... for free", "is coffee bad" / "... during pregnancy"):
    all the extra words are on one side, and one of them heads a phrase after a
    preposition. Extra framing words ("explain", "which city") do not count."""
    if only_a and only_b:
        return False
    longer, extra = (a, only_a) if only_a else (b, only_b)
    extra_words = {w for w in extra if w not in _FRAMING}
    if not extra_words:
        return False
    frame = longer.frame
    return any(
        frame[i] in _PREPOSITIONS and _stem(frame[i + 1]) in extra_words
        for i in range(len(frame) - 1)
    )


_NEGATING_PREFIXES = ("un", "in", "im", "ir", "il", "dis", "non", "non-", "de", "anti")


def _negated_form(x: str, y: str) -> bool:
    return any(y == p + x or x == p + y for p in _NEGATING_PREFIXES)


def _terms_shared(a: Analysis, b: Analysis) -> bool:
    """Each key term of `a` appears in `b` (as a word, or inside its text for multi-word
    and code-like terms)."""
    if not a.terms:
        return True
    words = set(b.words)
    text = " ".join(b.words)
    return all(t in words or t in text or f"{t}s" in words for t in a.terms)
