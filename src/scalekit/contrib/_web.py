"""What the framework integrations share, with no framework imported.

The request scope (:class:`RequestScope`, read with :func:`current_request`)
is a context variable set by the middleware of each integration for the
whole request, so endpoints, dependencies and background tasks started from
the request see it. The consistency-token signer (:class:`TokenSigner`)
makes the read-your-writes token safe to hand to a client in a cookie or a
header. The rate-limit helpers (:class:`RouteLimit`, :func:`combined_headers`)
turn the decisions of the app-wide limit and a route's own limits into one
set of IETF ``RateLimit``/``RateLimit-Policy`` headers, never two.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from scalekit.errors import ConfigurationError
from scalekit.ratelimit import Decision, HeaderStyle, Limit

__all__ = [
    "DEFAULT_TOKEN_COOKIE",
    "DEFAULT_TOKEN_HEADER",
    "RequestScope",
    "RouteLimit",
    "TokenSigner",
    "combined_headers",
    "current_request",
]

logger = logging.getLogger("scalekit.contrib")

DEFAULT_TOKEN_COOKIE = "scalekit_token"
DEFAULT_TOKEN_HEADER = "X-Scalekit-Token"
_MIN_SECRET_BYTES = 16


class RequestScope:
    """What scalekit knows about the request being served.

    Set by the integration's middleware (or Flask's ``before_request``) for
    the whole request: visible in endpoints, dependencies and background
    tasks started from it (it is a context variable; the object itself is
    shared, so what one part of the request records, the others see).

    ``request`` is the framework's request object (a Starlette ``Request``
    is built lazily from the ASGI scope, on first read; Flask's ``request``);
    ``method`` and ``path`` the request line; ``client`` the peer address (or
    None); ``decisions`` the rate-limit decisions taken for this request (the
    app-wide one first); ``token_in`` the verified consistency token the
    request brought, ``token_out`` the one its response hands back (None
    when it wrote nothing); ``limiter`` the rate limiter of the request's app.
    """

    # A plain slotted class, not a dataclass: ``request`` is a property, so that
    # the ASGI middleware builds no Request on the requests that never read it.
    __slots__ = (
        "_build",
        "_request",
        "_source",
        "client",
        "decisions",
        "limiter",
        "method",
        "path",
        "token_in",
        "token_out",
    )

    def __init__(
        self,
        method: str,
        path: str,
        client: str | None,
        request: Any = None,
        decisions: list[Decision] | None = None,
        token_in: str | None = None,
        token_out: str | None = None,
        limiter: Any = None,
        *,
        build: Callable[[Any], Any] | None = None,
        source: Any = None,
    ) -> None:
        """``build(source)`` makes ``request`` on first read when none is given.

        (The ASGI middleware passes ``build=Request, source=scope``.)
        """
        self.method = method
        self.path = path
        self.client = client
        self._request = request
        self._build = build
        self._source = source
        self.decisions: list[Decision] = [] if decisions is None else decisions
        self.token_in = token_in
        self.token_out = token_out
        self.limiter = limiter

    @property
    def request(self) -> Any:
        """The framework's request object (None when there is none)."""
        request = self._request
        if request is None and self._build is not None:
            request = self._request = self._build(self._source)
        return request

    @request.setter
    def request(self, value: Any) -> None:
        self._request = value

    def serves(self, source: Any) -> bool:
        """Whether this scope was made for ``source`` (the ASGI scope given as ``source``)."""
        return self._source is source

    def __repr__(self) -> str:
        return (
            f"RequestScope(method={self.method!r}, path={self.path!r}, client={self.client!r}, "
            f"decisions={self.decisions!r}, token_in={self.token_in!r}, "
            f"token_out={self.token_out!r})"
        )


_current: ContextVar[RequestScope | None] = ContextVar("scalekit_request", default=None)


def current_request() -> RequestScope | None:
    """The :class:`RequestScope` of the request this code serves, or None outside one.

    >>> current_request() is None
    True
    """
    return _current.get()


def enter_scope(scope: RequestScope) -> Any:
    """Make ``scope`` current; returns the reset token for :func:`leave_scope`."""
    return _current.set(scope)


def leave_scope(reset: Any) -> None:
    """Undo :func:`enter_scope`."""
    _current.reset(reset)


# ---------------------------------------------------------------------------
# Consistency tokens
# ---------------------------------------------------------------------------


class TokenSigner:
    """Sign and verify consistency tokens so that a client cannot forge one.

    A routing token tells the pool how fresh a read must be; a forged one
    (an LSN far ahead) would pin a client's reads to the primary. The signed
    form is ``<token>.<mac>`` (HMAC-SHA256, 16 bytes, URL-safe base64): a
    cookie- and header-safe ASCII string. :meth:`verify` returns the token,
    or None for anything unsigned, tampered, malformed or older than
    ``max_age`` seconds (a token older than any replica lag you allow is
    useless). ``secret`` is bytes or text of at least 16 bytes; pass the same
    secret to every instance.

    >>> signer = TokenSigner("a secret of 16+ bytes")
    >>> signed = signer.sign("0/16B3748@1700000000250")
    >>> signer.verify(signed, now=1700000001.0)
    '0/16B3748@1700000000250'
    >>> signer.verify(signed + "x", now=1700000001.0) is None
    True

    Raises:
        ConfigurationError: a missing or short ``secret``, a bad ``max_age``.
    """

    __slots__ = ("_key", "max_age")

    def __init__(self, secret: str | bytes, *, max_age: float = 300.0) -> None:
        raw: object = secret.encode() if isinstance(secret, str) else secret
        if not isinstance(raw, bytes) or len(raw) < _MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"the token secret must be at least {_MIN_SECRET_BYTES} bytes",
                parameter="secret",
            )
        age: object = max_age
        if isinstance(age, bool) or not isinstance(age, int | float) or age <= 0:
            raise ConfigurationError(
                f"max_age must be a positive number of seconds, got {max_age!r}",
                parameter="max_age",
            )
        self._key = hashlib.sha256(b"scalekit.contrib.token\x00" + raw).digest()
        self.max_age = float(max_age)

    def _mac(self, token: str) -> str:
        digest = hmac.new(self._key, token.encode(), hashlib.sha256).digest()[:16]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, token: str) -> str:
        """``token`` with its signature appended."""
        return f"{token}.{self._mac(token)}"

    def verify(self, signed: str | None, *, now: float | None = None) -> str | None:
        """The token inside ``signed`` if the signature holds and it is fresh, else None."""
        if not signed or len(signed) > 128 or not signed.isascii():
            return None
        token, sep, mac = signed.rpartition(".")
        if not sep or not hmac.compare_digest(mac, self._mac(token)):
            logger.debug("scalekit: ignored a consistency token with a bad signature")
            return None
        _, at, ms = token.rpartition("@")
        if not at or not ms.isdigit():
            return None
        age = (time.time() if now is None else now) - int(ms) / 1000
        if age > self.max_age:
            return None
        return token


def known_token(pool: Any) -> tuple[bool, str | None]:
    """``(True, token)`` when the context's token needs no I/O to export, else ``(False, None)``.

    Most requests write nothing: their token is the one they brought (or
    None), read from the context with no query and, on asyncio, no greenlet
    bridge. Only a pending write needs ``export_token()`` (one query).
    """
    state = pool.router.var.get()
    if state.pending_write_at is not None:
        return False, None
    return True, None if state.token is None else state.token.encode()


# ---------------------------------------------------------------------------
# Rate limits
# ---------------------------------------------------------------------------


def _limits(limits: str | Limit | Sequence[str | Limit], parameter: str) -> tuple[Limit, ...]:
    if isinstance(limits, Limit):
        return (limits,)
    if isinstance(limits, str):
        return tuple(Limit.parse_many(limits))
    if isinstance(limits, list | tuple) and limits:
        out: list[Limit] = []
        for item in limits:
            out.extend(_limits(item, parameter))
        return tuple(out)
    raise ConfigurationError(
        f"{parameter} must be a limit, a limit string or a list of them, got {limits!r}",
        parameter=parameter,
    )


@dataclass(frozen=True, slots=True)
class RouteLimit:
    """One route's (or the app's) rate limits: what to count, per what key.

    ``limits`` is a :class:`~scalekit.ratelimit.Limit`, a string such as
    ``"100/hour"`` or ``"10/second; 1000/day"``, or a list of them (all are
    hit at once: allowed only when every one allows). ``key`` turns the
    framework's request into the key counted (defaults to the client
    address); ``scope`` separates the counters of routes that share limits
    and keys (defaults to the route); ``cost`` is how many units one request
    takes.

    >>> RouteLimit.of("10/minute").limits
    (Limit(10/60s),)

    Raises:
        ConfigurationError: a bad limit, key function or cost.
    """

    limits: tuple[Limit, ...]
    key: Callable[[Any], str] | None = None
    scope: str = ""
    cost: int = 1

    @classmethod
    def of(
        cls,
        limits: str | Limit | Sequence[str | Limit],
        *,
        key: Callable[[Any], str] | None = None,
        scope: str = "",
        cost: int = 1,
    ) -> RouteLimit:
        """Build and validate a :class:`RouteLimit` from user input."""
        parsed = _limits(limits, "limits")
        if key is not None and not callable(key):
            raise ConfigurationError(f"key must be callable, got {key!r}", parameter="key")
        count: object = cost
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigurationError(f"cost must be a positive int, got {cost!r}", parameter="cost")
        return cls(parsed, key, scope, cost)

    def counter_key(self, request_key: str, route: str) -> str:
        """The limiter key for ``request_key`` on ``route`` (route limits count per route)."""
        scope = self.scope or route
        return f"{scope}|{request_key}" if scope else request_key


def combined_headers(decisions: Sequence[Decision], style: HeaderStyle = "ietf") -> dict[str, str]:
    """One set of rate-limit headers for every decision taken on a request.

    With one decision, :meth:`Decision.headers`. With several (an app-wide
    limit and a route's own), ``RateLimit-Policy`` lists each policy once,
    ``RateLimit`` carries one item per decision (the most restrictive limit
    of each), legacy ``X-RateLimit-*`` fields and ``Retry-After`` report the
    most restrictive decision: never a header twice.

    >>> from scalekit.ratelimit import Decision, Limit
    >>> a = Decision(True, "k", Limit(100, 60), 99, 1.0, 0.0)
    >>> b = Decision(False, "k", Limit(5, 1, name="route"), 0, 1.0, 0.4)
    >>> headers = combined_headers([a, b])
    >>> headers["RateLimit"], headers["Retry-After"]
    ('"100-per-60s";r=99;t=1, "route";r=0;t=1', '1')
    """
    if len(decisions) == 1:
        return decisions[0].headers(style)
    worst = most_restrictive(decisions)
    headers = worst.headers(style)
    if style == "legacy":
        return headers
    policies: list[str] = []
    items: list[str] = []
    for decision in decisions:
        for part in decision.headers("ietf")["RateLimit-Policy"].split(", "):
            if part not in policies:
                policies.append(part)
        item = _rate_item(decision)
        if item not in items:
            items.append(item)
    headers["RateLimit-Policy"] = ", ".join(policies)
    headers["RateLimit"] = ", ".join(items)
    return headers


def _rate_item(decision: Decision) -> str:
    return decision.headers("ietf")["RateLimit"]


def most_restrictive(decisions: Sequence[Decision]) -> Decision:
    """The denial with the longest wait, else the allowance with the least left."""
    denied = [d for d in decisions if not d.allowed]
    if denied:
        return max(denied, key=lambda d: d.retry_after)
    return min(decisions, key=lambda d: (d.remaining, -d.reset_after))


def retry_after_seconds(decision: Decision) -> int:
    """``Retry-After`` of a denial: whole seconds, rounded up, at least 1."""
    return max(math.ceil(decision.retry_after), 1)


DENIED_BODY = b'{"detail":"rate limit exceeded"}'
