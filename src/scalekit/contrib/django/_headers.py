"""One set of rate-limit headers for every limit a request met (pure).

draft-ietf-httpapi-ratelimit-headers-11: ``RateLimit-Policy`` lists each policy
(``"name";q=<quota>;w=<window>``) and ``RateLimit`` each policy's current state
(``"name";r=<remaining>;t=<seconds to reset>``), as structured-field lists. A
request checked by the middleware and by a view's decorator gets one field of
each, never two: policies of the same name are listed once (the lowest
remaining wins), and ``Retry-After`` is the longest wait of the denials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scalekit.ratelimit import Decision
from scalekit.ratelimit._core import policy_header, policy_token

__all__ = ["merged_headers"]


def merged_headers(decisions: Sequence[Decision]) -> dict[str, str]:
    """The response headers for ``decisions`` (every limit one request was checked against)."""
    if len(decisions) == 1:
        checked = decisions[0].limits
        if len(checked) <= 1 or len({policy_token(limit) for limit in checked}) == len(checked):
            return decisions[0].headers()
    policies: dict[str, str] = {}
    current: dict[str, tuple[int, int]] = {}
    retry_after = 0
    for decision in decisions:
        for limit in decision.limits or (decision.limit,):
            policies.setdefault(policy_token(limit), policy_header((limit,)))
        token = policy_token(decision.limit)
        state = (decision.remaining, max(math.ceil(decision.reset_after), 0))
        if token not in current or state[0] < current[token][0]:
            current[token] = state
        if not decision.allowed:
            retry_after = max(retry_after, math.ceil(decision.retry_after), 1)
    headers = {
        "RateLimit-Policy": ", ".join(policies.values()),
        "RateLimit": ", ".join(f"{token};r={r};t={t}" for token, (r, t) in current.items()),
    }
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    return headers
