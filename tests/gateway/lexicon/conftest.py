from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import engine_environment
from gateway.lexicon.pull import default_path, is_pulled
from gateway.lexicon.wordnet import WordNet


@pytest.fixture(scope="session")
def wordnet_path() -> Path:
    """The real WordNet 3.0 files (pulled by `make install`)."""
    path = default_path(engine_environment().home)
    if not is_pulled(path):
        pytest.fail(f"WordNet is missing in {path}: run `llm-gateway models pull`")
    return path


@pytest.fixture(scope="session")
def wordnet(wordnet_path: Path) -> WordNet:
    return WordNet.open(wordnet_path)
