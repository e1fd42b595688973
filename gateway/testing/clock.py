"""A clock that moves only when told to, for tests of anything that takes a `clock`
(stores, caches, the limits plugin): advance time instead of sleeping."""

from __future__ import annotations


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
