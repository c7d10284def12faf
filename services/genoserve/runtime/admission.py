"""How long a model's session calls take, for refusing at admission what cannot finish in time.

Triton's queue policy (``ModelQueuePolicy`` in Triton's model_config.proto:
``default_timeout_microseconds`` with ``timeout_action: REJECT``) rejects a request once it has
waited in the queue past its timeout, so under overload the client learns it only after waiting.
The dynamic batcher instead estimates, when a request arrives, how long the work already queued
and its own rows will take (``CallCost``, fit to the session calls it has timed), and refuses a
request that cannot finish before its deadline at once with RESOURCE_EXHAUSTED: the client can
back off or go elsewhere, and the queue holds only work that can still be delivered in time.
"""

from __future__ import annotations

#: Weight of the newest call in the running means (about the last 10-20 calls count). The first
#: calls are averaged with equal weights (1/k for the k-th), so that a slow model, whose calls are
#: few, is not judged for long by its first, often unrepresentative, call.
WEIGHT = 0.1
#: A call counts as at most this many times its prediction (a stall, e.g. a page-in or a GC pause,
#: moves the estimate by at most ``WEIGHT * (CLIP - 1)``, and a lasting slowdown is still followed).
CLIP = 4.0


class CallCost:
    """Seconds one session call of ``n`` rows takes, ``a + b * n``: an exponentially weighted
    least-squares fit to the calls observed (per-call overhead ``a``, per-row cost ``b``).

    While every call has the same size (a saturated queue makes full batches) there is nothing to
    fit a line to, and where the fit says bigger calls cost less than nothing per call (``a < 0``,
    e.g. a lone call that had the machine to itself, then full batches on a busy one), the cost is
    taken as proportional to rows: ``a = 0`` and ``b`` the least-squares slope through the origin,
    which the biggest calls weigh on most."""

    def __init__(self, weight: float = WEIGHT) -> None:
        self.weight = weight
        self.calls = 0
        self._n = self._d = self._nn = self._nd = 0.0
        self.overhead = 0.0  # a: seconds per call
        self.per_row = 0.0  # b: seconds per row

    @property
    def measured(self) -> bool:
        return self.calls > 0

    def observe(self, rows: int, seconds: float) -> None:
        """A session call of ``rows`` rows (>= 1) took ``seconds``."""
        if self.calls:
            limit = CLIP * self.seconds(rows)
            if limit > 0:
                seconds = min(seconds, limit)
            w = max(self.weight, 1 / (self.calls + 1))
            self._n += w * (rows - self._n)
            self._d += w * (seconds - self._d)
            self._nn += w * (rows * rows - self._nn)
            self._nd += w * (rows * seconds - self._nd)
        else:
            self._n, self._d, self._nn, self._nd = rows, seconds, rows * rows, rows * seconds
        self.calls += 1
        self._fit()

    def _fit(self) -> None:
        variance = self._nn - self._n * self._n
        proportional = self._nd / self._nn
        if variance <= (0.05 * self._n) ** 2:  # (nearly) one size only: no slope to see
            self.overhead, self.per_row = 0.0, proportional
            return
        slope = (self._nd - self._n * self._d) / variance
        intercept = self._d - slope * self._n
        if slope < 0:  # noise: bigger calls were not slower
            self.overhead, self.per_row = self._d, 0.0
        elif intercept < 0:
            self.overhead, self.per_row = 0.0, proportional
        else:
            self.overhead, self.per_row = intercept, slope

    def seconds(self, rows: int, calls: int = 1) -> float:
        """Estimated seconds for ``rows`` rows in ``calls`` session calls, one after another."""
        return calls * self.overhead + rows * self.per_row
