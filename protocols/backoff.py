"""Capped, jittered exponential backoff for reconnect loops.

"Full jitter" (AWS Architecture Blog, *Exponential Backoff and Jitter*): each delay is uniform in
``[0, min(cap, base * factor**attempt)]``, so a plant full of gateways that lost the same switch
does not reconnect in lockstep. A delay never exceeds `cap`, so a device that comes back is found
again within `cap` seconds: reconnects always recover.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How long to wait between attempts.

    Args:
        base: the first delay's upper bound, seconds.
        factor: growth per failed attempt.
        cap: the largest delay, seconds.
        min_delay: a floor under the jitter, so a tight loop is impossible.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    min_delay: float = 0.05

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap) or self.factor < 1 or self.min_delay < 0:
            raise ValueError(f"invalid backoff policy {self!r}: need 0 < base <= cap, factor >= 1")

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay after `attempt` consecutive failures (0-based)."""
        # Clamp the exponent so a device down for a week does not overflow a float.
        return min(self.cap, self.base * self.factor ** min(attempt, 64))


@dataclass(slots=True)
class Backoff:
    """The running state of one reconnect loop: call `next_delay()` after a failure, `reset()`
    after a success."""

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """The delay before the next attempt; advances the attempt counter."""
        ceiling = self.policy.ceiling(self.attempt)
        self.attempt += 1
        return max(self.policy.min_delay, self.rng.uniform(0.0, ceiling))

    def reset(self) -> None:
        """Forget past failures (call after a successful connect)."""
        self.attempt = 0
