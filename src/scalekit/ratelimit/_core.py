"""The rules of rate limiting: limits, algorithms, decisions and headers. No I/O.

Theory of operation
-------------------

Every algorithm is a pair of pure functions over an explicit *state*:

``check(state, now, amount, period, capacity, cost) -> (allowed, retry_after, new_state)``
    Decide one hit of ``cost`` at time ``now``. ``new_state`` is the state to
    store if the hit is committed (it is the *forced* state when the hit is
    denied: what the state would be if the denied hit were counted anyway).

``describe(state, now, amount, period, capacity) -> (remaining, reset_after)``
    What a state means at ``now``: capacity left, and time until full.

Times are whole microseconds held in floats (whole numbers below 2**53 are
exact; Redis's ``TIME`` gives whole microseconds and the memory backend floors
its clock), the limit's numbers are floats too, and every expression is written in the
same order as in the Lua scripts in ``_lua/``: Python floats and Lua numbers
are both IEEE-754 doubles, so the memory backend (which runs this module) and
Redis (which runs the scripts) reach the same decision bit for bit (tested
step by step against real Redis). States that Redis keeps as strings are
written with ``%d`` (whole numbers) and ``%.17g`` (fractions), which
round-trip exactly; the outcome's times are rounded up to whole microseconds,
so that the script can return them as integer replies.

:func:`evaluate` runs one hit against several limits at once (``hit_all``):
every limit is checked, and the new states are committed only if all of them
allow the hit (or if ``consume_denied`` asks that denied hits be counted too).
The reported limit is the most restrictive one: among denials the one with the
longest ``retry_after``; among allowances the one with the fewest remaining.

The algorithms
--------------

``gcra``
    Generic cell rate algorithm. State: the theoretical arrival time ``tat``
    (whole microseconds and a fraction).
    Emission interval ``T = period / amount``; a hit is allowed when
    ``max(tat, now) + cost*T - capacity*T <= now``. Admits at most
    ``capacity + elapsed/T`` over any interval. One number per key.
``token_bucket``
    State: ``(tokens, last)``. Refills ``amount`` tokens per ``period`` up to
    ``capacity``. Same admission bound as GCRA, stored differently.
``sliding_window_log``
    Exact: at most ``amount`` in any window of length ``period``. State: the
    timestamps of the last ``amount`` admitted units, newest first.
``sliding_window_counter``
    Cloudflare's approximation: the previous fixed window's count weighted by
    how much of it still overlaps the sliding window, plus the current one.
    At most ``amount`` per fixed window; two counters per key.
``fixed_window``
    At most ``amount`` per aligned window ``[k*period, (k+1)*period)``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Final, Literal, NamedTuple, TypeAlias

from scalekit.errors import ConfigurationError, RateLimitExceeded

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Decision",
    "HeaderStyle",
    "Limit",
    "Outcome",
    "State",
    "concurrency_acquire",
    "evaluate",
    "hash_key_part",
    "ietf_fields",
    "policy_header",
    "policy_token",
    "storage_key",
]

Algorithm: TypeAlias = Literal[
    "gcra", "token_bucket", "sliding_window_log", "sliding_window_counter", "fixed_window"
]
HeaderStyle: TypeAlias = Literal["ietf", "legacy", "both"]

ALGORITHMS: Final[tuple[Algorithm, ...]] = (
    "gcra",
    "token_bucket",
    "sliding_window_log",
    "sliding_window_counter",
    "fixed_window",
)
#: Algorithms whose capacity may differ from their amount (``burst``).
BURST_ALGORITHMS: Final = frozenset({"gcra", "token_bucket"})

US_PER_SECOND: Final = 1_000_000.0
#: The largest ``amount`` and ``burst`` of a :class:`Limit` (and cost of a hit).
MAX_AMOUNT: Final = 10**12
#: The longest period of a :class:`Limit`, and the longest time its burst may
#: take to refill (``per * burst / amount``). State lives at most this long, in
#: whole microseconds well below 2**53 (exact in a double, as the Lua scripts
#: compute) and in TTLs of whole milliseconds that Redis accepts.
MAX_PERIOD: Final = timedelta(days=3660)
MAX_PERIOD_US: Final = MAX_PERIOD // timedelta(microseconds=1)
#: The largest ``amount`` of a ``sliding_window_log`` limit: its log keeps one
#: entry per admitted unit (about 20 bytes each in Redis), written in one script.
MAX_LOG_AMOUNT: Final = 100_000

# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------

_UNITS: Final[dict[str, float]] = {
    "ms": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
}  # fmt: skip
_LIMIT_RE: Final = re.compile(
    r"^\s*(?P<amount>\d+)\s*(?:/|\bper\b)\s*(?P<count>\d+(?:\.\d+)?)?\s*(?P<unit>[a-zA-Z]+)\s*$"
)


@dataclass(frozen=True, slots=True)
class Limit:
    """A rate: ``amount`` units per ``per``, with an optional ``burst`` capacity.

    ``per`` is a :class:`~datetime.timedelta` or a number of seconds.
    ``burst`` is how many units may be admitted at once by the algorithms that
    have a capacity separate from their rate (GCRA and token bucket); it
    defaults to ``amount``. Window algorithms have no burst: using one with a
    ``burst`` different from ``amount`` raises :class:`ConfigurationError`.
    ``name`` is the policy name shown in the ``RateLimit-Policy`` header.

    >>> Limit(100, per=timedelta(hours=1))
    Limit(100/3600s)
    >>> Limit.parse("10/second").burst
    10

    Ranges (they keep every number of the Lua scripts exact): ``amount`` and
    ``burst`` from 1 to ``10**12``; ``per`` from 1 microsecond to 3660 days;
    the time to refill the burst (``per * burst / amount``) at most 3660
    days; for ``sliding_window_log``, ``amount`` at most 100,000.

    Raises:
        ConfigurationError: ``amount``/``burst`` not an int in range, ``per``
            not a duration in range, or a burst that takes too long to refill.
    """

    amount: int
    per: timedelta = field(default=timedelta(seconds=1))
    burst: int = 0
    name: str | None = None
    # Limits are dict keys on every check (the limiters cache what they derive
    # from one): hash once.
    _hash: int = field(default=0, init=False, repr=False, compare=False)
    # Its IETF header parts, ``(token, policy item)``, formatted at first use
    # (see :func:`_ietf_parts`): headers are built on every response.
    _ietf: tuple[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(
        self,
        amount: int,
        per: timedelta | float = timedelta(seconds=1),
        *,
        burst: int | None = None,
        name: str | None = None,
    ) -> None:
        if not is_int(amount):
            raise ConfigurationError(f"amount must be an int, got {amount!r}", parameter="amount")
        if not 1 <= amount <= MAX_AMOUNT:
            raise ConfigurationError(
                f"amount must be between 1 and {MAX_AMOUNT}, got {amount}", parameter="amount"
            )
        if isinstance(per, bool):
            raise ConfigurationError(f"per must be a duration, got {per!r}", parameter="per")
        if isinstance(per, (int, float)):
            # Checked before timedelta() sees it, which overflows past 10**9 days.
            if not math.isfinite(per) or not 0 < per <= MAX_PERIOD.total_seconds():
                raise _period_error(per)
            per = timedelta(seconds=per)
        if not isinstance(per, timedelta):
            raise ConfigurationError(
                f"per must be a timedelta or seconds, got {per!r}", parameter="per"
            )
        if per < timedelta(microseconds=1) or per > MAX_PERIOD:
            raise _period_error(per)
        if burst is None:
            burst = amount
        if not is_int(burst) or not 1 <= burst <= MAX_AMOUNT:
            raise ConfigurationError(
                f"burst must be an int between 1 and {MAX_AMOUNT}, got {burst!r}",
                parameter="burst",
            )
        if burst > amount and (per // timedelta(microseconds=1)) * burst > MAX_PERIOD_US * amount:
            raise ConfigurationError(
                f"burst {burst} takes longer than {MAX_PERIOD.days} days to refill at "
                f"{amount} per {per}; lower burst or per, or raise amount",
                parameter="burst",
            )
        if name is not None and not is_text(name):
            raise ConfigurationError("name must be a non-empty string", parameter="name")
        object.__setattr__(self, "amount", amount)
        object.__setattr__(self, "per", per)
        object.__setattr__(self, "burst", burst)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "_hash", hash((amount, per, burst, name)))
        object.__setattr__(self, "_ietf", None)

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[Callable[..., Limit], tuple[int, timedelta, int, str | None]]:
        # Rebuild through __init__: the cached hash of a name differs between processes.
        return (_rebuild_limit, (self.amount, self.per, self.burst, self.name))

    @classmethod
    def parse(cls, text: str, *, burst: int | None = None, name: str | None = None) -> Limit:
        """Parse ``"100/hour"``, ``"10 per 5 seconds"``, ``"5/2m"``, ``"1000/day"``.

        Units: ms, s/sec/second, m/min/minute, h/hr/hour, d/day, w/week
        (singular or plural).

        >>> Limit.parse("100/hour") == Limit(100, per=3600)
        True

        Raises:
            ConfigurationError: the text is not a limit (``parameter="limit"``).
        """
        if not isinstance(text, str):
            raise ConfigurationError(f"a limit must be a string, got {text!r}", parameter="limit")
        match = _LIMIT_RE.match(text)
        unit = match and _UNITS.get(match["unit"].lower())
        if match is None or unit is None:
            raise ConfigurationError(
                f"cannot parse rate limit {_shown(text)}: expected '<amount>/<unit>' or "
                "'<amount> per <count> <unit>', like '100/hour' or '10 per 5 seconds'",
                parameter="limit",
            )
        count = float(match["count"]) if match["count"] else 1.0
        seconds = count * unit
        if not 0 < seconds <= MAX_PERIOD.total_seconds():  # also inf: a count of 400 digits
            raise ConfigurationError(
                f"rate limit {_shown(text)}: the period must be above 0 and at most "
                f"{MAX_PERIOD.days} days",
                parameter="limit",
            )
        digits = match["amount"].lstrip("0")
        if len(digits) > len(str(MAX_AMOUNT)):  # int() refuses over 4300 digits
            raise ConfigurationError(
                f"rate limit {_shown(text)}: the amount must be at most {MAX_AMOUNT}",
                parameter="limit",
            )
        # Whole microseconds: timedelta rounds anyway; this keeps the key stable.
        per = timedelta(microseconds=round(seconds * US_PER_SECOND))
        return cls(int(digits or "0"), per, burst=burst, name=name)

    @classmethod
    def parse_many(cls, text: str) -> list[Limit]:
        """Parse several limits separated by ``;`` or ``,``: ``"10/second; 1000/hour"``.

        Raises:
            ConfigurationError: any part is not a limit, or there is none.
        """
        if not isinstance(text, str):
            raise ConfigurationError(f"limits must be a string, got {text!r}", parameter="limit")
        parts = [part for part in re.split(r"[;,]", text) if part.strip()]
        if not parts:
            raise ConfigurationError(f"no rate limit in {_shown(text)}", parameter="limit")
        return [cls.parse(part) for part in parts]

    @property
    def period(self) -> float:
        """The period in seconds."""
        return self.per.total_seconds()

    @property
    def period_us(self) -> int:
        """The period in whole microseconds (what the algorithms use)."""
        return self.per // timedelta(microseconds=1)

    @property
    def policy_name(self) -> str:
        """``name``, or ``"<amount>-per-<seconds>s"``; used in ``RateLimit-Policy``."""
        if self.name is not None:
            return self.name
        return f"{self.amount}-per-{_format_seconds(self.period)}s"

    def scaled(self, instances: int) -> Limit:
        """This limit divided among ``instances`` processes (at least 1 each).

        Used by the ``local`` fallback: each instance enforces its share.
        """
        if instances <= 1:
            return self
        amount = max(1, self.amount // instances)
        # The share's burst refills within MAX_PERIOD too (rounding may raise the ratio).
        most = max(1, MAX_PERIOD_US * amount // self.period_us)
        return Limit(
            amount, self.per, burst=min(max(1, self.burst // instances), most), name=self.name
        )

    def params(self, algorithm: str) -> tuple[float, float, float]:
        """``(amount, period_us, capacity)`` as floats, the algorithms' inputs.

        Raises:
            ConfigurationError: a window algorithm with a ``burst`` set, or a
                ``sliding_window_log`` amount above ``MAX_LOG_AMOUNT``.
        """
        if algorithm not in BURST_ALGORITHMS and self.burst != self.amount:
            raise ConfigurationError(
                f"{algorithm} has no burst; use gcra or token_bucket for {self!r}",
                parameter="burst",
            )
        if algorithm == "sliding_window_log" and self.amount > MAX_LOG_AMOUNT:
            raise ConfigurationError(
                f"sliding_window_log keeps one entry per unit: its amount must be at most "
                f"{MAX_LOG_AMOUNT}, got {self.amount}; use sliding_window_counter or gcra",
                parameter="amount",
            )
        return (float(self.amount), float(self.period_us), float(self.burst))

    def __repr__(self) -> str:
        burst = f", burst={self.burst}" if self.burst != self.amount else ""
        name = f", name={self.name!r}" if self.name else ""
        return f"Limit({self.amount}/{_format_seconds(self.period)}s{burst}{name})"

    def __str__(self) -> str:
        return f"{self.amount}/{_format_seconds(self.period)}s"


def _shown(text: str) -> str:
    """``text`` quoted for an error message, cut short if long."""
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


def _period_error(per: object) -> ConfigurationError:
    return ConfigurationError(
        f"per must be between 1 microsecond and {MAX_PERIOD.days} days, got {per!r}",
        parameter="per",
    )


def _rebuild_limit(amount: int, per: timedelta, burst: int, name: str | None) -> Limit:
    return Limit(amount, per, burst=burst, name=name)


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (runtime validation of typed parameters)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_text(value: object) -> bool:
    """A non-empty ``str``."""
    return isinstance(value, str) and value != ""


def is_number(value: object) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"


def coerce_limit(limit: Limit | str) -> Limit:
    """A :class:`Limit`, parsing strings; raises ConfigurationError otherwise."""
    if isinstance(limit, Limit):
        return limit
    if isinstance(limit, str):
        return Limit.parse(limit)
    raise ConfigurationError(f"expected a Limit or a string, got {limit!r}", parameter="limit")


def check_algorithm(algorithm: str) -> Algorithm:
    """Validate an algorithm name; raises ConfigurationError for unknown names."""
    for known in ALGORITHMS:
        if algorithm == known:
            return known
    raise ConfigurationError(
        f"unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}",
        parameter="algorithm",
    )


def check_cost(cost: int, limits: Sequence[Limit]) -> float:
    """Validate a hit's cost against the limits; returns it as a float.

    Raises:
        ConfigurationError: not an int, negative, or more than a limit's
            capacity (such a hit could never be allowed).
    """
    if not is_int(cost) or cost < 0:
        raise ConfigurationError(f"cost must be an int >= 0, got {cost!r}", parameter="cost")
    for limit in limits:
        if cost > limit.burst:
            raise ConfigurationError(
                f"cost {cost} exceeds the capacity of {limit!r}; it could never be allowed",
                parameter="cost",
            )
    return float(cost)


# ---------------------------------------------------------------------------
# Algorithms: check() and describe() per algorithm, mirrored in _lua/*.lua
# ---------------------------------------------------------------------------

#: ``gcra``: (tat whole us, fraction) | None; ``token_bucket``: (tokens, last) | None;
#: ``sliding_window_log``: tuple of timestamps, newest first;
#: ``*_window*``: (window, current, previous) | None.
State: TypeAlias = float | tuple[float, ...] | None
Check: TypeAlias = tuple[bool, float, State]


#: A GCRA hit up to this fraction of an emission interval early counts as on
#: time: sums of emission intervals are rounded, and a hit exactly on schedule
#: must not be denied for a rounding error. (Admits at most 1e-9 extra units.)
GCRA_SLACK: Final = 1e-9


def _gcra(state: State, now: float) -> tuple[float, float, float]:
    """``(tat whole us, tat fraction, debt)``: debt is how far tat is ahead of now.

    The theoretical arrival time is kept as whole microseconds plus a fraction
    so that it keeps sub-microsecond precision (a lone double near 1.7e15 has
    a resolution of only 0.25 us).
    """
    if isinstance(state, tuple) and len(state) == 2:
        tat, fraction = state
        debt = (tat - now) + fraction
        if debt > 0:
            return tat, fraction, debt
    return now, 0.0, 0.0


def gcra_check(state: State, now: float, a: float, p: float, b: float, cost: float) -> Check:
    interval = p / a
    tau = interval * b
    slack = interval * GCRA_SLACK
    tat, fraction, debt = _gcra(state, now)
    ahead = debt + cost * interval
    total = fraction + cost * interval
    whole = math.floor(total)
    new_state = (tat + whole, total - whole)
    if ahead <= tau + slack:
        return True, 0.0, new_state
    return False, ahead - tau, new_state


def gcra_describe(state: State, now: float, a: float, p: float, b: float) -> tuple[float, float]:
    interval = p / a
    tau = interval * b
    slack = interval * GCRA_SLACK
    _tat, _fraction, debt = _gcra(state, now)
    # The division's rounding can be one off: settle on the count the check agrees with.
    remaining = max(math.floor((tau - debt) / interval), 0)
    steps = 0
    while remaining > 0 and debt + remaining * interval > tau + slack and steps < 4:
        remaining = remaining - 1
        steps = steps + 1
    steps = 0
    while debt + (remaining + 1) * interval <= tau + slack and steps < 4:
        remaining = remaining + 1
        steps = steps + 1
    return float(remaining), debt


def _bucket(state: State, now: float, a: float, p: float, b: float) -> tuple[float, float]:
    if not isinstance(state, tuple) or len(state) != 2:
        return b, now
    tokens, last = state
    if now > last:
        tokens = min(b, tokens + (now - last) * (a / p))
        last = now
    return tokens, last


def _bucket_ready_at(state: State, a: float, p: float, cost: float) -> float:
    """The first whole microsecond at which the stored bucket holds ``cost`` tokens.

    Refilling is computed from the *stored* ``(tokens, last)`` (as the next
    check will compute it), and the estimate is nudged by whole microseconds
    until it is the first instant that passes: so waiting ``retry_after`` is
    always enough, despite float rounding in ``tokens + elapsed * rate``.
    """
    tokens, last = state if isinstance(state, tuple) and len(state) == 2 else (0.0, 0.0)
    rate = a / p
    ready = last + math.ceil((cost - tokens) / rate)
    steps = 0
    while tokens + (ready - last) * rate < cost and steps < 8:
        ready = ready + 1
        steps = steps + 1
    steps = 0
    while ready - 1 > last and tokens + (ready - 1 - last) * rate >= cost and steps < 8:
        ready = ready - 1
        steps = steps + 1
    return float(ready)


def token_bucket_check(
    state: State, now: float, a: float, p: float, b: float, cost: float
) -> Check:
    tokens, last = _bucket(state, now, a, p, b)
    if tokens >= cost:
        return True, 0.0, (tokens - cost, last)
    return False, _bucket_ready_at(state, a, p, cost) - now, (tokens - cost, last)


def token_bucket_describe(
    state: State, now: float, a: float, p: float, b: float
) -> tuple[float, float]:
    tokens, _last = _bucket(state, now, a, p, b)
    remaining = float(max(math.floor(tokens), 0))
    if tokens >= b:
        return remaining, 0.0
    return remaining, (b - tokens) / (a / p)


def _log(state: State, now: float) -> tuple[tuple[float, ...], float]:
    entries = state if isinstance(state, tuple) else ()
    if entries and entries[0] > now:
        now = entries[0]  # the store's clock went back: time never does here
    return entries, now


def _log_count(entries: tuple[float, ...], cutoff: float) -> int:
    """How many of the newest-first ``entries`` are newer than ``cutoff`` (binary search)."""
    low, high = 0, len(entries)
    while low < high:
        mid = (low + high) // 2
        if entries[mid] > cutoff:
            low = mid + 1
        else:
            high = mid
    return low


def sliding_log_check(state: State, now: float, a: float, p: float, b: float, cost: float) -> Check:
    entries, now = _log(state, now)
    cutoff = now - p
    index = int(a - cost)
    new_entries = ((now,) * int(cost) + entries)[: int(a)]
    if index < len(entries) and entries[index] > cutoff:
        return False, entries[index] - cutoff, new_entries
    return True, 0.0, new_entries


def sliding_log_describe(
    state: State, now: float, a: float, p: float, b: float
) -> tuple[float, float]:
    entries, now = _log(state, now)
    count = _log_count(entries, now - p)
    if count == 0:
        return a, 0.0
    return float(max(a - count, 0)), entries[0] + p - now


def _windows(state: State, now: float, p: float) -> tuple[float, float, float, float]:
    """``(window, current, previous, elapsed fraction)`` at ``now``."""
    window = float(math.floor(now / p))
    current = previous = 0.0
    if isinstance(state, tuple) and len(state) == 3:
        stored, count, before = state
        if stored == window:
            current, previous = count, before
        elif stored == window - 1:
            previous = count
        elif stored > window:  # the store's clock went back
            window, current, previous = stored, count, before
    fraction = max((now - window * p) / p, 0.0)
    return window, current, previous, fraction


def sliding_counter_check(
    state: State, now: float, a: float, p: float, b: float, cost: float
) -> Check:
    window, current, previous, fraction = _windows(state, now, p)
    weight = previous * (1 - fraction) + current
    new_state = (window, current + cost, previous)
    if weight + cost <= a:
        return True, 0.0, new_state
    if current + cost <= a:
        # Wait until the previous window's share has shrunk enough.
        needed = 1 - (a - current - cost) / previous
        retry_after = (needed - fraction) * p
    else:
        # Wait for the next window, then until this window's share shrinks.
        needed = 1 - (a - cost) / current
        retry_after = (1 - fraction) * p + needed * p
    return False, retry_after, new_state


def sliding_counter_describe(
    state: State, now: float, a: float, p: float, b: float
) -> tuple[float, float]:
    window, current, previous, fraction = _windows(state, now, p)
    weight = previous * (1 - fraction) + current
    remaining = float(max(math.floor(a - weight), 0))
    if current > 0:
        return remaining, (window + 2) * p - now
    if previous > 0:
        return remaining, (window + 1) * p - now
    return remaining, 0.0


def _fixed(state: State, now: float, p: float) -> tuple[float, float]:
    window = float(math.floor(now / p))
    count = 0.0
    if isinstance(state, tuple) and len(state) == 3:
        stored, stored_count, _unused = state
        if stored == window:
            count = stored_count
        elif stored > window:  # the store's clock went back
            window, count = stored, stored_count
    return window, count


def fixed_window_check(
    state: State, now: float, a: float, p: float, b: float, cost: float
) -> Check:
    window, count = _fixed(state, now, p)
    new_state = (window, count + cost, 0.0)
    if count + cost <= a:
        return True, 0.0, new_state
    return False, (window + 1) * p - now, new_state


def fixed_window_describe(
    state: State, now: float, a: float, p: float, b: float
) -> tuple[float, float]:
    window, count = _fixed(state, now, p)
    if count <= 0:
        return a, 0.0
    return float(max(a - count, 0)), (window + 1) * p - now


CheckFunction: TypeAlias = Callable[[State, float, float, float, float, float], Check]
DescribeFunction: TypeAlias = Callable[[State, float, float, float, float], tuple[float, float]]

RULES: Final[Mapping[str, tuple[CheckFunction, DescribeFunction]]] = {
    "gcra": (gcra_check, gcra_describe),
    "token_bucket": (token_bucket_check, token_bucket_describe),
    "sliding_window_log": (sliding_log_check, sliding_log_describe),
    "sliding_window_counter": (sliding_counter_check, sliding_counter_describe),
    "fixed_window": (fixed_window_check, fixed_window_describe),
}


class Outcome(NamedTuple):
    """The raw result of :func:`evaluate` (and of the Lua scripts), in microseconds.

    ``limit_index`` is the position of the reported (most restrictive) limit. (A
    named tuple rather than a dataclass: one is built per check, on the hot path.)
    """

    allowed: bool
    limit_index: int
    remaining: float
    reset_after: float
    retry_after: float


def evaluate(
    algorithm: str,
    states: Sequence[State],
    now: float,
    params: Sequence[tuple[float, float, float]],
    cost: float,
    *,
    consume_denied: bool = False,
    write: bool = True,
) -> tuple[Outcome, list[State] | None]:
    """Hit every limit at once; returns the outcome and the states to store.

    The states are ``None`` when nothing is to be stored: ``write=False`` (a
    peek), or a denial without ``consume_denied``. The driver loop of
    ``_lua/driver.lua`` is this function, line for line.
    """
    check, describe = RULES[algorithm]
    checks = [
        check(state, now, a, p, b, cost) for state, (a, p, b) in zip(states, params, strict=True)
    ]
    allowed = all(result[0] for result in checks)
    commit = write and (allowed or consume_denied)
    finals: list[State] = [result[2] for result in checks] if commit else list(states)
    index = -1
    best_remaining = best_reset = best_retry = 0.0
    for position, ((ok, retry_after, _new), final, (a, p, b)) in enumerate(
        zip(checks, finals, params, strict=True)
    ):
        remaining, reset_after = describe(final, now, a, p, b)
        if allowed:
            better = index < 0 or remaining < best_remaining
        else:
            better = not ok and (index < 0 or retry_after > best_retry)
        if better:
            index = position
            best_remaining, best_reset, best_retry = remaining, reset_after, retry_after
    # Whole microseconds, rounded up, as the script returns them (integer replies).
    outcome = Outcome(
        allowed, index, best_remaining, float(math.ceil(best_reset)), float(math.ceil(best_retry))
    )
    return outcome, (finals if commit else None)


def concurrency_acquire(
    leases: Mapping[str, float], now: float, limit: int, lease: float, lease_id: str
) -> tuple[bool, int, float, dict[str, float]]:
    """Try to take one of ``limit`` slots; mirrors ``_lua/concurrency_acquire.lua``.

    ``leases`` maps lease ids to expiry times; expired ones (their holder died
    or forgot them) are dropped first. Returns ``(granted, in_flight,
    retry_after, new_leases)``; ``retry_after`` is the time until the oldest
    lease expires when the slots are full.
    """
    live = {lid: expiry for lid, expiry in leases.items() if expiry > now}
    if len(live) < limit:
        live[lease_id] = now + lease
        return True, len(live), 0.0, live
    return False, len(live), min(live.values()) - now, live


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------

_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,64}$")
_SAFE_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:@/+=-]{1,100}$")
_CODES: Final = {
    "gcra": "gcra",
    "token_bucket": "tb",
    "sliding_window_log": "swl",
    "sliding_window_counter": "swc",
    "fixed_window": "fw",
    "concurrency": "conc",
}


def check_namespace(namespace: str) -> str:
    """Validate a key namespace: 1-100 chars of ``[A-Za-z0-9_.:@/+=-]``."""
    if not is_text(namespace) or not _SAFE_NAMESPACE.match(namespace):
        raise ConfigurationError(
            f"namespace must be 1-100 characters of letters, digits and _.:@/+=-, got "
            f"{namespace!r}",
            parameter="namespace",
        )
    return namespace


def hash_key_part(key: str | bytes) -> str:
    """The user's key as it appears inside a Redis key: safe and unambiguous.

    Short keys of safe characters are kept readable (``k:customer:42``);
    anything else (unicode, braces, glob characters, spaces, long strings,
    non-UTF-8 bytes) is hashed (``h:<blake2b-128 hex>``). The prefixes keep the
    two forms from ever colliding.

    Raises:
        ConfigurationError: the key is not a str or bytes.
    """
    if isinstance(key, bytes):
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            return "h:" + hashlib.blake2b(key, digest_size=16).hexdigest()
        key = text
    if not isinstance(key, str):
        raise ConfigurationError(f"a key must be str or bytes, got {key!r}", parameter="key")
    if _SAFE_KEY.match(key):
        return "k:" + key
    raw = key.encode("utf-8", "surrogatepass")
    return "h:" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def storage_key(namespace: str, algorithm: str, key: str | bytes, limit: Limit) -> str:
    """The Redis key a limiter keeps ``key``'s state under for ``limit``.

    For inspecting Redis (``redis-cli TTL``, ``MEMORY USAGE``) or finding the
    Redis Cluster node that holds a customer's limits
    (``cluster.get_node_from_key(storage_key(...))``). ``namespace`` and
    ``algorithm`` are the limiter's (``RateLimiter(namespace=...,
    algorithm=...)``, defaults ``"scalekit:rl"`` and ``"gcra"``). Every key
    of one user key shares the hash tag ``{<key part>}`` (see
    :func:`hash_key_part`), so a multi-limit check stays in one Cluster slot.
    To clear a key's state use ``limiter.reset(key, limit)``, not ``DEL``.

    >>> storage_key("app", "gcra", "customer:42", Limit.parse("100/hour"))
    'app:{k:customer:42}:gcra:100:3600000000'

    Raises:
        ConfigurationError: a bad namespace, an unknown algorithm, a key that
            is not str or bytes, or ``limit`` not a :class:`Limit`.
    """
    check_namespace(namespace)
    if algorithm not in ALGORITHMS:
        raise ConfigurationError(
            f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}",
            parameter="algorithm",
        )
    if not isinstance(limit, Limit):
        raise ConfigurationError(
            f"limit must be a Limit (Limit.parse('100/hour')), got {type(limit).__name__}",
            parameter="limit",
        )
    return f"{namespace}:{{{hash_key_part(key)}}}{key_suffix(algorithm, limit)}"


def key_suffix(algorithm: str, limit: Limit) -> str:
    """The part of a storage key after the hash tag: algorithm and limit (and burst, if any)."""
    burst = f":b{limit.burst}" if limit.burst != limit.amount else ""
    return f":{_CODES[algorithm]}:{limit.amount}:{limit.period_us}{burst}"


def concurrency_key(namespace: str, key: str | bytes, limit: int) -> str:
    """The Redis key of a concurrency limiter's lease set for ``key``."""
    return f"{namespace}:{{{hash_key_part(key)}}}:conc:{limit}"


# ---------------------------------------------------------------------------
# Decisions and headers
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What a limiter decided about one hit.

    ``remaining`` is the capacity left after this hit; ``reset_after`` the
    seconds until the limit is back to full capacity; ``retry_after`` the
    seconds until the same hit would be allowed (0 when allowed). ``limit`` is
    the reported (most restrictive) limit, ``limits`` every limit checked.
    ``fallback`` names the fallback policy when the store was not used
    (``"allow"``, ``"deny"`` or ``"local"``), else ``None``.
    ``shadowed`` is true when shadow mode turned a denial into an allowance;
    ``cached`` when the local over-limit cache denied without asking the store.

    >>> decision = Decision(False, "k", Limit(10, 60), 0, 42.5, 3.2)
    >>> decision.headers(style="legacy")["Retry-After"]
    '4'
    """

    allowed: bool
    key: str
    limit: Limit
    remaining: int
    reset_after: float
    retry_after: float
    limits: tuple[Limit, ...] = ()
    fallback: str | None = None
    shadowed: bool = False
    cached: bool = False

    def __bool__(self) -> bool:
        return self.allowed

    def headers(self, style: HeaderStyle = "ietf") -> dict[str, str]:
        """HTTP response headers describing this decision.

        ``"ietf"``: ``RateLimit-Policy`` and ``RateLimit`` as in the IETF
        httpapi RateLimit header fields draft (structured fields:
        ``"name";q=<quota>;w=<window seconds>`` and
        ``"name";r=<remaining>;t=<seconds to reset>``). ``"legacy"``:
        ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``
        (seconds from now). ``"both"``: all of them. ``Retry-After`` (whole
        seconds, rounded up, at least 1) is added when the hit was denied.

        Raises:
            ConfigurationError: an unknown style.
        """
        if style == "ietf":
            policy, rate = ietf_fields(self)
            headers = {"RateLimit-Policy": policy, "RateLimit": rate}
        elif style == "legacy" or style == "both":
            headers = {}
            if style == "both":
                headers["RateLimit-Policy"], headers["RateLimit"] = ietf_fields(self)
            headers["X-RateLimit-Limit"] = str(self.limit.amount)
            headers["X-RateLimit-Remaining"] = str(self.remaining)
            headers["X-RateLimit-Reset"] = str(max(math.ceil(self.reset_after), 0))
        else:
            raise ConfigurationError(
                f"style must be 'ietf', 'legacy' or 'both', got {style!r}", parameter="style"
            )
        if not self.allowed:
            headers["Retry-After"] = str(max(math.ceil(self.retry_after), 1))
        return headers

    def raise_for_denied(self) -> Decision:
        """Return self if allowed; raise :class:`RateLimitExceeded` if denied.

        Raises:
            RateLimitExceeded: carrying this decision as ``.decision``.
        """
        if not self.allowed:
            raise RateLimitExceeded(self.key, self.retry_after, self.limit, decision=self)
        return self


# Headers are built on every response; what depends only on the limits is
# formatted once (limits are few, and hash once).
@functools.lru_cache(maxsize=1024)
def _policy_header(limits: tuple[Limit, ...]) -> str:
    """The ``RateLimit-Policy`` value of ``limits``."""
    return ", ".join((limit._ietf or _ietf_parts(limit))[1] for limit in limits)


def _ietf_parts(limit: Limit) -> tuple[str, str]:
    """``limit``'s sf-string token and ``RateLimit-Policy`` item, kept on it once formatted."""
    token = _sf_string(limit.policy_name)
    parts = (token, f"{token};q={limit.amount};w={max(math.ceil(limit.period), 1)}")
    object.__setattr__(limit, "_ietf", parts)
    return parts


def _policy_token(limit: Limit) -> str:
    """The policy name of ``limit`` as an sf-string."""
    return (limit._ietf or _ietf_parts(limit))[0]


def ietf_fields(decision: Decision) -> tuple[str, str]:
    """``decision``'s ``RateLimit-Policy`` and ``RateLimit`` values (``style="ietf"``).

    What :meth:`Decision.headers` sends, without the dict, for integrations
    that write the header fields themselves.
    """
    limit = decision.limit
    token, policy = limit._ietf or _ietf_parts(limit)
    limits = decision.limits
    if limits and (len(limits) > 1 or limits[0] is not limit):
        policy = _policy_header(limits)
    reset = math.ceil(decision.reset_after)
    if reset < 0:
        reset = 0
    return policy, f"{token};r={decision.remaining};t={reset}"


def policy_token(limit: Limit) -> str:
    """The name of ``limit``'s policy as the ``RateLimit`` headers write it (a quoted sf-string).

    For integrations that merge the headers of several decisions on one
    response: two items with one token are one policy.

    >>> policy_token(Limit(10, 60, name="api"))
    '"api"'
    """
    return _policy_token(limit)


def policy_header(limits: tuple[Limit, ...]) -> str:
    """The ``RateLimit-Policy`` value of ``limits`` (``"name";q=<quota>;w=<window>``, ...).

    >>> policy_header((Limit(10, 60, name="api"),))
    '"api";q=10;w=60'
    """
    return _policy_header(limits)


def _sf_string(text: str) -> str:
    """An RFC 8941 sf-string: printable ASCII, quotes and backslashes escaped."""
    cleaned = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return '"' + cleaned.replace("\\", "\\\\").replace('"', '\\"') + '"'


# One Decision is built per check. The dataclass's frozen __init__ sets its ten
# fields through object.__setattr__ by name; setting the slots through their
# descriptors builds the same object in about a third of the time.
_new_decision = object.__new__
(
    _set_allowed,
    _set_key,
    _set_limit,
    _set_remaining,
    _set_reset_after,
    _set_retry_after,
    _set_limits,
    _set_fallback,
    _set_shadowed,
    _set_cached,
) = (Decision.__dict__[field.name].__set__ for field in dataclasses.fields(Decision))


def make_decision(
    allowed: bool,
    key: str,
    limit: Limit,
    remaining: int,
    reset_after: float,
    retry_after: float,
    limits: tuple[Limit, ...],
    fallback: str | None = None,
    shadowed: bool = False,
) -> Decision:
    """``Decision(...)`` with every field given (``cached=False``), built faster."""
    decision: Decision = _new_decision(Decision)
    _set_allowed(decision, allowed)
    _set_key(decision, key)
    _set_limit(decision, limit)
    _set_remaining(decision, remaining)
    _set_reset_after(decision, reset_after)
    _set_retry_after(decision, retry_after)
    _set_limits(decision, limits)
    _set_fallback(decision, fallback)
    _set_shadowed(decision, shadowed)
    _set_cached(decision, False)
    return decision


def decision_from_outcome(
    outcome: Outcome,
    key: str | bytes,
    limits: Sequence[Limit],
    *,
    fallback: str | None = None,
    shadow: bool = False,
) -> Decision:
    """Turn a raw :class:`Outcome` (microseconds) into a :class:`Decision` (seconds)."""
    allowed = outcome.allowed
    shadowed = shadow and not allowed
    return make_decision(
        allowed or shadowed,
        key if key.__class__ is str else key_text(key),
        limits[outcome.limit_index],
        int(outcome.remaining),
        max(outcome.reset_after, 0.0) / US_PER_SECOND,
        max(outcome.retry_after, 0.0) / US_PER_SECOND,
        limits if isinstance(limits, tuple) else tuple(limits),
        fallback,
        shadowed,
    )


def key_text(key: str | bytes) -> str:
    """The user's key as ``Decision.key`` shows it (bytes decoded, undecodable bytes replaced)."""
    return key if isinstance(key, str) else key.decode("utf-8", "replace")


def fixed_decision(
    allowed: bool, key: str | bytes, limits: Sequence[Limit], *, fallback: str
) -> Decision:
    """The decision of the ``allow``/``deny`` fallbacks: no state consulted."""
    limit = limits[0]
    return Decision(
        allowed=allowed,
        key=key_text(key),
        limit=limit,
        remaining=limit.amount if allowed else 0,
        reset_after=0.0,
        retry_after=0.0 if allowed else 1.0,
        limits=tuple(limits),
        fallback=fallback,
    )
