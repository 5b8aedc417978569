"""The one retry backoff of runrelay (SDK requests and streams, model providers, webhooks)."""

from __future__ import annotations

import random


def backoff_s(attempt: int, *, base_s: float, cap_s: float, jitter: float = 0.5) -> float:
    """Seconds to wait before retry `attempt` (0 for the first): exponential from `base_s`,
    capped at `cap_s`, less a random part of up to `jitter` of it, so that clients that failed
    together do not all come back together."""
    ceiling = min(cap_s, base_s * 2.0**attempt)
    return ceiling * (1 - jitter * random.random())  # noqa: S311 - jitter, not cryptography
