"""The one back-off: exponential, full jitter, capped, never giving up.

Full jitter (a uniform draw from 0 to the bound) spreads the retries of many
devices after a shared outage instead of having them all hammer the service at once.
"""

from __future__ import annotations

import random


def backoff(failures: int, cap: float, base: float = 0.5) -> float:
    """Seconds to wait after ``failures`` failures in a row: uniform in [0, bound],
    where the bound doubles with each failure from ``2 * base`` up to ``cap``."""
    return random.uniform(0, min(cap, base * 2 ** min(failures, 30)))
