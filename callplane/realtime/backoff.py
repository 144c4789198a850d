"""How long to wait between attempts to re-open a Realtime session during an outage.

A call whose Realtime session dropped keeps its caller on hold while the bridge retries. The
first retries come quickly (most drops are one socket, and the next attempt succeeds), later
ones spread out so that hundreds of calls cut off by the same outage do not hammer the API in
step: each wait doubles up to a cap, and a random part of it (jitter) is taken off so the calls
drift apart. The whole schedule fits in the outage budget, after which the call ends.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["BACKOFF_CAP_S", "BACKOFF_FIRST_S", "BACKOFF_JITTER", "backoff_schedule"]

BACKOFF_FIRST_S = 0.2
"""The wait after the first failed attempt."""
BACKOFF_CAP_S = 4.0
"""No wait is longer than this: during a long outage the API is tried at least this often."""
BACKOFF_JITTER = 0.5
"""Up to this share of each wait is taken off at random."""


def backoff_schedule(
    budget_s: float,
    *,
    first_s: float = BACKOFF_FIRST_S,
    cap_s: float = BACKOFF_CAP_S,
    jitter: float = BACKOFF_JITTER,
    rand: Callable[[], float] = random.random,
) -> list[float]:
    """The waits between attempts, in order, adding up to ``budget_s`` at most.

    The n-th wait is ``min(cap_s, first_s * 2**n)`` less a random share of up to ``jitter``
    of it (``rand()`` in [0, 1) picks the share; pass a constant for a fixed schedule). The
    last wait is shortened so that the sum is exactly ``budget_s``: an attempt comes at the
    very end of the budget. A budget of zero or less gives no waits (one attempt, no retry).
    """
    if first_s <= 0 or cap_s < first_s:
        raise ValueError(f"need 0 < first_s <= cap_s, got first_s={first_s}, cap_s={cap_s}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter is a share of each wait, 0 <= jitter < 1; got {jitter}")
    waits: list[float] = []
    left = budget_s
    step = first_s
    while left > 1e-9:
        wait = min(step * (1 - jitter * rand()), left)
        waits.append(wait)
        left -= wait
        step = min(step * 2, cap_s)
    return waits
