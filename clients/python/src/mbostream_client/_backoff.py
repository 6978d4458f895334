"""Retry room: exponential backoff with full jitter for reconnecting streams."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(kw_only=True)
class Backoff:
    """Delays between reconnection attempts: ``uniform(0, min(cap, base * factor**attempt))``.

    Full jitter ("Exponential Backoff And Jitter", AWS architecture blog) spreads the reconnects
    of many clients after a server restart instead of having them arrive in waves.

    Parameters
    ----------
    base
        Upper bound of the first delay, seconds.
    factor
        Growth of the upper bound per failed attempt.
    cap
        Largest upper bound, seconds.
    rng
        Source of randomness (seed it for reproducible delays).
    """

    base: float = 0.1
    factor: float = 2.0
    cap: float = 5.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not self.base > 0:
            raise ValueError(f"base must be > 0 seconds, got {self.base}")
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if not self.cap >= self.base:
            raise ValueError(f"cap must be >= base ({self.base}), got {self.cap}")

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; each call counts one failed attempt."""
        bound = min(self.cap, self.base * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return self.rng.uniform(0.0, bound)

    def reset(self) -> None:
        """Forgets failed attempts (call it once a connection delivered data)."""
        self.attempt = 0
