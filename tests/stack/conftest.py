"""One stack for the package's tests: `make stack`'s topology (one real Redis, two engine
backends serving the bundled model, two gateway replicas), with the model also served
under a round-robin alias so that routing policies compare on the same backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing.stack import MODEL, Stack
from tests.serving import TEST_KV_CACHE_GB

ROUND_ROBIN = f"{MODEL}-round-robin"


def backend_flags(model: Path, max_num_seqs: int = 8) -> tuple[str, ...]:
    flags = ("--model", str(model), "--served-model-name", MODEL)
    return (*flags, "--kv-cache-gb", str(TEST_KV_CACHE_GB), "--max-num-seqs", str(max_num_seqs))


@pytest.fixture(scope="package")
def stack(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("stack")
    aliases = {ROUND_ROBIN: "round_robin"}
    with Stack(
        2, 2, backend_flags=backend_flags(smollm2_gguf), folder=folder, aliases=aliases
    ) as s:
        yield s
