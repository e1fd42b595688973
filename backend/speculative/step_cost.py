"""What a forward step costs on this machine, as a function of its tokens and context."""

from __future__ import annotations


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
    timed in interleaved passes so that its points compare (the best of each kept, and
    a point above a larger step's lowered to it: other work only ever slows a timing).
    Real steps move `scale`, an exponential average of measured / predicted time, which
    follows the machine getting slower or faster as a whole. They reshape the curve only
    to undo a bad start: a real step far cheaper than its point predicts (below
    RESHAPE x the prediction, rescaled) shrinks that point and `attention` alike until
    the prediction is near it. A calibration run beside a burst of other work can price a
    4-row step at 4x a 1-row step for the server's life; one real step of that size then
    puts it right. Only far-off points move: refining every point from real steps let
    ordinary noise bend the curve (and windowed low quantiles per size, tried, kept
    rarely seen sizes at dearer windows).
    """

    RESHAPE = 0.75  # a real step below this share of its prediction reshapes the curve
    # The fast steps of one size run this share of its usual time (measured on a quiet
    # and a loaded 2-core machine: min / median 0.83-0.84 for 1- and 9-row steps).
    TYPICAL = 0.85

    def __init__(self, alpha: float = 0.05) -> None:
        self.alpha = alpha
        self.attention = 0.0  # seconds per attended context token
        self.scale = 1.0
        self._points: dict[int, float] = {}
        self._curve_points: list[tuple[int, float]] = []  # sorted, never falling

    def calibrate(self, num_tokens: int, seconds: float) -> None:
        """One point of the curve: a step of num_tokens tokens attending to nothing."""
        self._points[num_tokens] = seconds
        # The curve never falls: each point is lowered to the cheapest larger step's
        # time. Other work only ever slows a timing, so a point above a larger step's is
        # the one that was slowed (lifting the larger ones to it instead let one slowed
        # two-token point make every guess look twice as dear for the server's life).
        xs = sorted(self._points)
        ys = [self._points[n] for n in xs]
        for i in range(len(ys) - 2, -1, -1):
            ys[i] = min(ys[i], ys[i + 1])
        self._curve_points = list(zip(xs, ys, strict=True))

    def observe(self, num_tokens: int, seconds: float, attended: int = 0) -> None:
        """A real step: nudges `scale` (one outlier moves it at most by alpha * 2x), or
        shrinks a far too dear point (see the class)."""
        weights, context = self._curve(num_tokens), self.attention * attended
        if seconds <= 0.0 or weights + context <= 0.0:
            return
        rescaled = seconds / self.scale  # what the step would cost at calibration's speed
        if rescaled < self.RESHAPE * (weights + context):
            # The shape was wrong, not the machine's speed. Which part was overpriced is
            # unknown: both shrink alike, to where this step would be one of the fast ones
            # of its size (TYPICAL), not to it: one lucky step is not the usual.
            shrink = rescaled / self.TYPICAL / (weights + context)
            if attended:
                self.attention *= shrink
            self.calibrate(num_tokens, weights * shrink)
            return
        ratio = min(max(seconds / (weights + context), 0.5 * self.scale), 2.0 * self.scale)
        self.scale += self.alpha * (ratio - self.scale)

    def __call__(self, num_tokens: int, attended: int = 0) -> float:
        return self.scale * (self._curve(num_tokens) + self.attention * attended)

    def _curve(self, num_tokens: int) -> float:
        points = self._curve_points
        if not points:
            return float(num_tokens)
        lo, ylo = points[0]
        # Through the origin below the first point: a cost never goes below zero.
        if num_tokens <= lo:
            return ylo * num_tokens / lo
        for hi, yhi in points[1:]:
            if num_tokens <= hi:
                return ylo + (yhi - ylo) * (num_tokens - lo) / (hi - lo)
            lo, ylo = hi, yhi
        return ylo * num_tokens / lo  # beyond: proportional
