"""Princeton WordNet 3.0 read from its own database files (the WNDB format: index.<pos>,
data.<pos>, <pos>.exc), to tell how two English words relate: the same meaning,
opposites, siblings under one parent, units of measure (gateway/lexicon/relations.py).

The semantic cache's verifier asks this about the words two questions differ by:
"largest"/"smallest" (antonyms), "gold"/"silver" (both noble metals), "autumn"/"spring"
(both seasons) embed close together, and a cache that took them for the same question
would answer one with the other's answer.

Files: index.<pos> maps a lemma to its synsets (byte offsets into data.<pos>, most
frequent sense first); a data.<pos> line holds a synset's words and pointers
("!" antonym, "@"/"@i" hypernym, "&" similar-to, ...). The data files are memory-mapped
and their lines parsed on demand (a few microseconds each, kept in an LRU cache);
`open()` reads only the index and exception files (~0.5 s). Reads only: no writes, no
network. Offsets count bytes of LF-terminated lines (gateway/lexicon/pull.py writes the
files that way).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

POS = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}

# Morphological detachment rules (WordNet's morphy): suffix -> replacement, per POS.
_RULES = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
          ("shes", "sh"), ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""),
          ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Synset:
    key: str  # "<pos><offset>", e.g. "n13371760"
    pos: str  # n v a r (adjective satellites are "a", with `satellite` set)
    satellite: bool
    words: tuple[str, ...]  # lower-case lemmas, "_" for spaces
    hypernyms: tuple[str, ...]  # keys, instance hypernyms included
    similar: tuple[str, ...]  # "&": a satellite adjective's head and vice versa
    antonyms: tuple[str, ...]  # keys of synsets holding an antonym of one of `words`


class WordNet:
    def __init__(
        self,
        index: dict[str, dict[str, tuple[int, ...]]],
        exceptions: dict[str, dict[str, tuple[str, ...]]],
        data: dict[str, mmap.mmap],
    ) -> None:
        self._index = index  # lemma -> pos -> offsets, most frequent sense first
        self._exceptions = exceptions  # pos -> inflected form -> base forms
        self._data = data  # pos -> mapped data file
        self.synset = lru_cache(maxsize=65536)(self._read_synset)

    @classmethod
    def open(cls, folder: Path) -> WordNet:
        """Reads a WordNet 3.0 database folder (FileNotFoundError if a file is missing)."""
        index: dict[str, dict[str, tuple[int, ...]]] = {}
        exceptions: dict[str, dict[str, tuple[str, ...]]] = {}
        data: dict[str, mmap.mmap] = {}
        for pos, name in POS.items():
            for line in (folder / f"index.{name}").read_text("ascii").splitlines():
                if line.startswith(" "):
                    continue  # the licence header
                fields = line.split()
                pointer_count = int(fields[3])
                synset_count = int(fields[2])
                offsets = fields[4 + pointer_count + 2 :]
                index.setdefault(fields[0], {})[pos] = tuple(map(int, offsets[:synset_count]))
            table: dict[str, tuple[str, ...]] = {}
            for line in (folder / f"{name}.exc").read_text("ascii").splitlines():
                form, *bases = line.split()
                table[form] = tuple(bases)
            exceptions[pos] = table
            with (folder / f"data.{name}").open("rb") as f:
                data[pos] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(index, exceptions, data)

    def __len__(self) -> int:
        return len(self._index)

    def lemmas(self, word: str, pos: str) -> list[str]:
        """The base forms of `word` as `pos` that WordNet has ("largest" -> ["large"],
        "geese" -> ["goose"]), the word itself first when it is one."""
        word = word.lower().replace(" ", "_")
        found = [word] if pos in self._index.get(word, {}) else []
        for base in self._exceptions[pos].get(word, ()):
            if pos in self._index.get(base, {}) and base not in found:
                found.append(base)
        for suffix, replacement in _RULES[pos]:
            if word.endswith(suffix) and len(word) > len(suffix) + 1:
                base = word[: len(word) - len(suffix)] + replacement
                if pos in self._index.get(base, {}) and base not in found:
                    found.append(base)
        return found

    def senses(self, word: str, limit: int | None = None) -> list[Synset]:
        """The synsets of `word` in every part of speech, each POS's most frequent senses
        first; `limit` keeps that many per POS and base form."""
        out: list[Synset] = []
        for pos in POS:
            for lemma in self.lemmas(word, pos):
                offsets = self._index[lemma][pos]
                out += [self.synset(f"{pos}{o}") for o in offsets[:limit]]
        return out

    def _read_synset(self, key: str) -> Synset:
        pos, offset = key[0], int(key[1:])
        data = self._data[pos]
        end = data.find(b"\n", offset)
        fields = data[offset:end].split(b" | ", 1)[0].decode("ascii").split()
        satellite = fields[2] == "s"
        count = int(fields[3], 16)
        words = tuple(fields[4 + 2 * i].lower().split("(")[0] for i in range(count))
        at = 4 + 2 * count
        pointer_count = int(fields[at])
        hypernyms, similar, antonyms = [], [], []
        for i in range(pointer_count):
            symbol, target, target_pos = fields[at + 1 + 4 * i : at + 4 + 4 * i]
            target_key = f"{'a' if target_pos == 's' else target_pos}{int(target)}"
            if symbol in ("@", "@i"):
                hypernyms.append(target_key)
            elif symbol == "&":
                similar.append(target_key)
            elif symbol == "!":
                antonyms.append(target_key)
        return Synset(key, pos, satellite, words, tuple(hypernyms), tuple(similar), tuple(antonyms))
