"""What routing sees of a backend and of a request, what a policy is, and the bound on
any one backend's load."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol, TypeVar

MASK64 = (1 << 64) - 1


@dataclass(slots=True, eq=False)
class BackendState:
    """One backend as routing sees it. eq=False: two idle backends with equal fields are
    still two backends, so identity is what compares (and hashes)."""

    id: str
    weight: float = 1.0
    outstanding: int = 0  # requests sent and not yet finished, kept by the caller


B = TypeVar("B", bound=BackendState)


@dataclass(frozen=True, slots=True)
class RoutingKey:
    """What a request offers for affinity: `prefix_hashes[i]` covers its prompt up to a
    block boundary, boundaries increasing (see prefix_hash_chain); `affinity` is a
    conversation (or user) id."""

    prefix_hashes: tuple[int, ...] = ()
    affinity: str | None = None


class Policy(Protocol):
    def choose(self, backends: Sequence[B], key: RoutingKey) -> B:
        """Pick one of `backends` (the healthy candidates, never empty)."""
        ...

    def on_routed(self, backend: BackendState, key: RoutingKey) -> None:
        """The request with `key` was sent to `backend`."""
        ...


def load_bound(total_outstanding: int, n_backends: int, load_factor: float) -> int:
    """The most requests one backend may hold once the next one is placed:
    ceil(c * (total + 1) / n). With c >= 1 some backend is always under it: were every
    backend at the bound they would hold n * bound >= total + 1 > total requests."""
    return math.ceil(load_factor * (total_outstanding + 1) / n_backends)


def first_healthy_group(groups: Iterable[Sequence[B]], healthy: Callable[[B], bool]) -> list[B]:
    """The healthy members of the first group that has any. Groups are in fallback order:
    a later group serves only while every earlier one is down. Empty if none has any."""
    for group in groups:
        members = [b for b in group if healthy(b)]
        if members:
            return members
    return []


outstanding: Callable[[BackendState], int] = attrgetter("outstanding")
id_of: Callable[[BackendState], str] = attrgetter("id")
