"""What a forward step costs on this machine, as a function of its tokens and context."""

from __future__ import annotations

import itertools


class StepCost:
    """Seconds a forward step takes on this machine:

        cost(tokens, attended) = scale * (curve(tokens) + attention * attended)

    curve: the weights' part, as a function of the step's token count (flat while
    streaming the weights dominates, with a step where the few-row matmul hands over to
    the BLAS GEMM, then rising); attended: the context tokens the step's one-query rows
    (decodes, verify rows) attend to, summed, and `attention` the seconds per such token.
    Without the second term a step of 64 long decodes looks as cheap as a 64-token
    prefill, and guesses look free where they are not.

    The shape (curve points, `attention`) comes from a calibration at engine start-up,
    timed back to back so that its points compare; real steps only move `scale`, an
    exponential average of measured / predicted time, which follows the machine getting
    slower or faster as a whole. (Refining each point from real steps instead lets noise
    bend the curve: one inflated point makes the next segment flat and guesses free.)
    """

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = alpha
        self.attention = 0.0  # seconds per attended context token
        self.scale = 1.0
        self._points: dict[int, float] = {}

    def calibrate(self, num_tokens: int, seconds: float) -> None:
        """One point of the curve: a step of num_tokens tokens attending to nothing."""
        self._points[num_tokens] = seconds

    def observe(self, num_tokens: int, seconds: float, attended: int = 0) -> None:
        """A real step: nudges `scale` (one outlier moves it at most by alpha * 2x)."""
        predicted = self._curve(num_tokens) + self.attention * attended
        if predicted > 0.0 and seconds > 0.0:
            ratio = min(max(seconds / predicted, 0.5 * self.scale), 2.0 * self.scale)
            self.scale += self.alpha * (ratio - self.scale)

    def __call__(self, num_tokens: int, attended: int = 0) -> float:
        return self.scale * (self._curve(num_tokens) + self.attention * attended)

    def _curve(self, num_tokens: int) -> float:
        if not self._points:
            return float(num_tokens)
        xs = sorted(self._points)
        # Interpolate through the origin below the first point: a cost never goes below
        # zero, and a larger step never costs less than a smaller one.
        if num_tokens <= xs[0]:
            return self._points[xs[0]] * num_tokens / xs[0]
        ylo = self._points[xs[0]]
        for lo, hi in itertools.pairwise(xs):
            yhi = max(self._points[hi], ylo)
            if num_tokens <= hi:
                return ylo + (yhi - ylo) * (num_tokens - lo) / (hi - lo)
            ylo = yhi
        return ylo * num_tokens / xs[-1]  # beyond: proportional
