"""The semantic cache's error bound: serve a verified candidate only where the evidence
says that answers served there are wrong at most `max_error_rate` of the time, with
confidence `confidence`; elsewhere ask the backend and learn from its answer.

After vCache ("Verified Semantic Prompt Caching", ICLR 2026): when to serve is not set
by hand but learned online from labelled outcomes, and a hit is served only where the
learned bound allows it. Outcomes come from comparing a cached answer with the
backend's answer to the new question (plugins/semantic_evidence.py):
- explorations: a candidate the bound does not allow yet is answered by the backend
  (the client gets the fresh answer: no error) and the two answers are compared;
- shadow checks: a share of served hits is also answered by the backend afterwards.

Where: similarity bands. The range from the cache's own threshold (`floor`) to 1 is cut
into `BANDS` equal bands; a band is served once the one-sided Clopper-Pearson upper
bound of its error rate, at confidence 1 - (1 - confidence) / BANDS (Bonferroni: all
bands hold at once with `confidence`), is at most `max_error_rate`. Every served band
is then under the rate, so the served hits together are too. Bands, not one threshold
learned from the top down: near misses of the costliest kind ("Does the Moon orbit the
Earth?" / "Does the Earth orbit the Moon?", cosine 0.99) sit at the very top, so the
error rate does not fall as similarity rises and a top-down search stops at once.

Per entry: an entry whose answer was found wrong for a question at similarity s is
never served again at s or below (its neighbourhood is crowded with questions that
differ: "symbol for gold" near silver, copper, iron...).

Until a band has enough outcomes nothing in it is served (at 2% and 95% confidence
over 5 bands, 228 right answers in a row): the cache earns its hits. Pure: no clock,
no I/O; the plugin feeds outcomes and asks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

BANDS = 5


@dataclass(slots=True)
class EntryEvidence:
    """What one cached entry's own outcomes say."""

    wrong_at: float = -math.inf  # highest similarity at which its answer was wrong


@dataclass(slots=True)
class ErrorBound:
    max_error_rate: float
    confidence: float = 0.95
    floor: float = 0.8  # the cache's similarity threshold: no candidate comes below it
    window: int = 2000  # the most recent outcomes kept per band (older ones age out)
    _outcomes: list[deque[bool]] = field(default_factory=list)  # per band: wrong?
    _wrong: list[int] = field(default_factory=list)  # per band: how many are True
    _served: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.max_error_rate < 1:
            raise ValueError("max_error_rate must be in (0, 1)")
        if not 0 < self.confidence < 1:
            raise ValueError("confidence must be in (0, 1)")
        if not 0 <= self.floor < 1:
            raise ValueError("floor must be in [0, 1)")
        self._outcomes = [deque(maxlen=self.window) for _ in range(BANDS)]
        self._wrong = [0] * BANDS
        self._served = [False] * BANDS

    def band(self, similarity: float) -> int:
        width = (1.0 - self.floor) / BANDS
        return min(BANDS - 1, max(0, int((similarity - self.floor) / width)))

    def edges(self, band: int) -> tuple[float, float]:
        width = (1.0 - self.floor) / BANDS
        return self.floor + band * width, self.floor + (band + 1) * width

    def observe(self, similarity: float, wrong: bool, entry: EntryEvidence | None = None) -> None:
        """One labelled outcome: the cached answer was (not) right for a question at
        `similarity` to the cached one."""
        b = self.band(similarity)
        outcomes = self._outcomes[b]
        if len(outcomes) == outcomes.maxlen:
            self._wrong[b] -= outcomes[0]  # the oldest ages out as this one comes in
        outcomes.append(wrong)
        self._wrong[b] += wrong
        alpha = (1 - self.confidence) / BANDS
        cdf = _binomial_cdf(self._wrong[b], len(outcomes), self.max_error_rate)
        self._served[b] = cdf <= alpha
        if wrong and entry is not None:
            entry.wrong_at = max(entry.wrong_at, similarity)

    @property
    def outcomes(self) -> int:
        return sum(len(o) for o in self._outcomes)

    def served_bands(self) -> list[bool]:
        return list(self._served)

    def allows(self, similarity: float, entry: EntryEvidence | None = None) -> bool:
        """Whether a verified candidate at `similarity` may be served."""
        if entry is not None and similarity <= entry.wrong_at:
            return False
        return self._served[self.band(similarity)]


def error_upper_bound(wrong: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound of an error rate seen as `wrong` of `n`:
    the p at which P(X <= wrong | n, p) = alpha (bisection; for reports and tests)."""
    if n == 0 or wrong >= n:
        return 1.0
    lo, hi = wrong / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _binomial_cdf(wrong, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p). The bound holds at p when this is <= alpha:
    seeing k or fewer errors would be that unlikely were the true rate p."""
    if n == 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < n else 1.0
    log_term = n * math.log1p(-p)  # P(X = 0)
    ratio = math.log(p) - math.log1p(-p)
    total = math.exp(log_term)
    for i in range(min(k, n)):
        log_term += math.log(n - i) - math.log(i + 1) + ratio
        total += math.exp(log_term)
    return min(total, 1.0)
