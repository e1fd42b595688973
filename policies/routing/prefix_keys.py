"""Routing keys from prompts: hashes of a prompt's leading prefixes at block boundaries,
the same in every process and on every host."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence


def prefix_hash_chain(
    data: str | bytes | Sequence[int], block_size: int, max_blocks: int, *, tail: bool = True
) -> tuple[int, ...]:
    """64-bit hashes of a prompt's leading prefixes (characters of a str, bytes, or token
    ids), one per boundary of `prefix_boundaries`: hashes[i] covers the prompt up to its
    i-th boundary, so two prompts share hashes[:k] exactly when they agree up to the k-th.
    Only full blocks count, as a KV cache only reuses full blocks.

    The tail matters: a key that stops at a fixed length cannot tell apart conversations
    whose system prompt is longer, so past `max_blocks` the boundaries go on to the end of
    the prompt, ~6% apart. blake2b rather than hash(): str hashes are salted per process,
    and every gateway replica must compute the same key."""
    if block_size < 1 or max_blocks < 0:
        raise ValueError("block_size must be >= 1 and max_blocks >= 0")
    hashes: list[int] = []
    running = hashlib.blake2b(digest_size=8)
    done = 0
    for end in prefix_boundaries(len(data) // block_size, max_blocks, tail=tail):
        running.update(_block_bytes(data[done * block_size : end * block_size]))
        done = end
        hashes.append(int.from_bytes(running.digest(), "little"))
    return tuple(hashes)


def prefix_boundaries(n_blocks: int, max_blocks: int, *, tail: bool = True) -> list[int]:
    """Block counts that get a prefix hash: 1, 2, ..., max_blocks, then (tail) each 1/16
    past the one before, up to n_blocks. Integer steps, so every host agrees."""
    bounds = list(range(1, min(n_blocks, max_blocks) + 1))
    if tail:
        b = max_blocks + max(1, max_blocks // 16)
        while b <= n_blocks:
            bounds.append(b)
            b += max(1, b // 16)
    return bounds


def _block_bytes(block: str | bytes | Sequence[int]) -> bytes:
    if isinstance(block, str):
        return block.encode("utf-8", "surrogatepass")
    if isinstance(block, bytes | bytearray | memoryview):
        return bytes(block)
    return struct.pack(f"<{len(block)}q", *block)  # fixed byte order: same on every host


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that is the same in every process."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")
