"""What the sync and async pools share: construction, context managers, tokens, health.

Nothing here has a colour: it configures the :class:`~scalekit.routing._router.Router`
and answers from what the router knows, without I/O. The pools that talk to a
server are ``_async.py`` (the source) and ``_sync.py`` (generated from it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from scalekit._clock import SYSTEM_CLOCK
from scalekit.errors import ConfigurationError, NoHealthyNode
from scalekit.routing._core import (
    BalancerName,
    ConsistencyMode,
    ConsistencyToken,
    RoutingConfig,
    Target,
)
from scalekit.routing._router import Router
from scalekit.typing import Clock

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["PoolBase", "ReadWalk"]


def _named(
    engines: object, prefix: str, parameter: str, *, single_name: str | None = None
) -> list[tuple[str, Any]]:
    if isinstance(engines, Mapping):
        items = list(engines.items())
        for name, _ in items:
            if not isinstance(name, str) or not name:
                raise ConfigurationError(
                    f"{parameter} names must be non-empty strings", parameter=parameter
                )
        return items
    if isinstance(engines, (str, bytes)) or not isinstance(engines, Sequence):
        if single_name is not None:
            return [(single_name, engines)]
        raise ConfigurationError(
            f"{parameter} must be a list of engines or a dict of name -> engine",
            parameter=parameter,
        )
    if single_name is not None and len(engines) == 1:
        return [(single_name, engines[0])]
    return [(f"{prefix}{index}", engine) for index, engine in enumerate(engines, 1)]


class ReadWalk:
    """The bookkeeping of one read-only connect: plans, refusals and the final error.

    The first node of the read plan that accepts a connection wins; a node
    that refuses is left out of the next plan, and once every node has had
    its chance the read fails with :class:`~scalekit.errors.NoHealthyNode`
    (caused by the last refusal). The shells do the connecting.
    """

    __slots__ = ("_exclude", "_last", "_router", "_tried")

    def __init__(self, router: Router) -> None:
        self._router = router
        self._tried: list[str] = []
        self._exclude: frozenset[str] = frozenset()
        self._last: BaseException | None = None

    def rounds(self) -> range:
        """One read plan per round: enough for every node to refuse once."""
        return range(len(self._router.engines) + 1)

    def plan(self) -> tuple[str, ...]:
        """The nodes to try, in order, without those that refused (a router call: bridge it).

        Raises:
            NoHealthyNode: no node left to read from.
        """
        try:
            return self._router.plan_read(self._exclude).attempts
        except NoHealthyNode as exc:
            if self._last is None:
                raise
            raise NoHealthyNode("replica", tried=self._tried, reason=exc.reason) from self._last

    def refused(self, node: str, exc: BaseException) -> None:
        """Note that ``node`` refused a connection; re-raise ``exc`` when it is not that."""
        if getattr(exc, "scalekit_node", None) != node:
            raise exc
        self._tried.append(node)
        self._exclude = self._exclude | {node}
        self._last = exc

    def exhausted(self) -> NoReturn:
        """Every round refused.

        Raises:
            NoHealthyNode: always.
        """
        error = NoHealthyNode("replica", tried=self._tried, reason="every node refused")
        raise error from self._last


class PoolBase:
    """Shared by :class:`RoutingPool` and :class:`AsyncRoutingPool`."""

    _async = False

    def __init__(
        self,
        primary: object,
        replicas: object = (),
        *,
        name: str = "default",
        blacklist_seconds: float = 10.0,
        max_blacklist_seconds: float = 300.0,
        max_lag_seconds: float | None = 5.0,
        max_lag_bytes: int | None = None,
        lag_readmit_ratio: float = 0.8,
        consistency: ConsistencyMode = "auto",
        sticky_seconds: float = 2.0,
        sticky_timeout: float = 0.0,
        lsn_probe_interval: float = 0.02,
        balancer: BalancerName = "round_robin",
        weights: Mapping[str, float] | None = None,
        fallback_to_primary: bool = True,
        max_primary_read_share: float = 1.0,
        spill_window_seconds: float = 10.0,
        check_interval: float | None = 1.0,
        role_check_interval: float = 0.5,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        raw_name: object = name
        if not isinstance(raw_name, str) or not raw_name:
            raise ConfigurationError(
                f"name must be a non-empty str, got {raw_name!r}", parameter="name"
            )
        needed = ("monotonic", "time", "sleep", *(("asleep",) if self._async else ()))
        missing = [attr for attr in needed if not callable(getattr(clock, attr, None))]
        if missing:
            raise ConfigurationError(
                f"clock must be a scalekit Clock (monotonic(), time(), sleep(), asleep()); "
                f"{type(clock).__name__} has no {', '.join(missing)}",
                parameter="clock",
            )
        config = RoutingConfig(
            blacklist_seconds=blacklist_seconds,
            max_blacklist_seconds=max_blacklist_seconds,
            max_lag_seconds=max_lag_seconds,
            max_lag_bytes=max_lag_bytes,
            lag_readmit_ratio=lag_readmit_ratio,
            consistency=consistency,
            sticky_seconds=sticky_seconds,
            sticky_timeout=sticky_timeout,
            lsn_probe_interval=lsn_probe_interval,
            balancer=balancer,
            weights=weights,
            fallback_to_primary=fallback_to_primary,
            max_primary_read_share=max_primary_read_share,
            spill_window_seconds=spill_window_seconds,
            check_interval=check_interval,
            role_check_interval=role_check_interval,
        )
        primaries = _named(primary, "primary", "primary", single_name="primary")
        if not primaries:
            raise ConfigurationError("a primary engine is required", parameter="primary")
        replica_items = _named(replicas, "replica", "replicas")
        self._given: dict[str, Any] = {}
        sync_primaries = [(n, self._sync_engine(e, "primary")) for n, e in primaries]
        sync_replicas = [(n, self._sync_engine(e, "replicas")) for n, e in replica_items]
        for node, engine in [*primaries, *replica_items]:
            self._given[node] = engine
        self.name = name
        self.config = config
        self._router = Router(
            name=name,
            primaries=sync_primaries,
            replicas=sync_replicas,
            config=config,
            clock=clock,
            sleep=self._greenlet_sleep(clock),
        )
        # The engines the pool's connections come from: the router's handles
        # (copies of the given engines that carry its listeners), in the pool's
        # colour. The given engines stay listener-free; ``nodes`` returns them.
        self._originals: dict[str, Any] = dict(self._router.engines)
        if self._async:
            from sqlalchemy.ext.asyncio import AsyncEngine

            for node, handle in self._router.engines.items():
                self._originals[node] = AsyncEngine(handle)

    # -- construction helpers ------------------------------------------------------------------

    def _greenlet_sleep(self, clock: Clock) -> Callable[[float], None]:
        """How the router sleeps: the clock's ``sleep``, or in an asyncio pool, whose
        router runs inside the greenlet bridge, ``asleep`` awaited from there."""
        if not self._async:
            return clock.sleep
        from sqlalchemy.util import await_only

        def sleep(seconds: float) -> None:
            await_only(clock.asleep(seconds))

        return sleep

    def _sync_engine(self, engine: object, parameter: str) -> Engine:
        from sqlalchemy import Engine
        from sqlalchemy.ext.asyncio import AsyncEngine

        if self._async:
            if isinstance(engine, AsyncEngine):
                return engine.sync_engine
            kind = "a sync Engine" if isinstance(engine, Engine) else repr(type(engine).__name__)
            raise ConfigurationError(
                f"AsyncRoutingPool needs AsyncEngine objects, got {kind}; "
                "use RoutingPool for sync engines",
                parameter=parameter,
            )
        if isinstance(engine, Engine):
            return engine
        kind = "an AsyncEngine" if isinstance(engine, AsyncEngine) else repr(type(engine).__name__)
        raise ConfigurationError(
            f"RoutingPool needs sqlalchemy.Engine objects, got {kind}; "
            "use AsyncRoutingPool for async engines",
            parameter=parameter,
        )

    def __repr__(self) -> str:
        """Node names, roles and health as the pool knows them (no I/O, never a URL).

        >>> pool  # doctest: +SKIP
        <RoutingPool 'default' primary='primary' nodes=[primary: primary up, replica1: replica up]>
        """
        core = self._router.core
        now = self._router.clock.monotonic()
        primary = core.primary
        parts = []
        for node, state in core.snapshot().items():
            role = "primary" if node == primary else state.role.value
            blacklisted = state.down_until is not None and now < state.down_until
            words = [f"{node}: {role}", "up" if state.reachable and not blacklisted else "down"]
            if state.same_server_as is not None:
                words.append(f"same server as {state.same_server_as}")
            if state.lag_seconds is not None and node != primary:
                words.append(f"lag={state.lag_seconds:.1f}s")
            if state.lagging:
                words.append("lagging")
            parts.append(" ".join(words))
        brain = " split_brain" if core.split_brain else ""
        return (
            f"<{type(self).__name__} {self.name!r} primary={primary!r}{brain} "
            f"nodes=[{', '.join(parts)}]>"
        )

    # -- public, no I/O ------------------------------------------------------------------------

    @property
    def router(self) -> Router:
        """The I/O shell around the routing core (for sessions and advanced use)."""
        return self._router

    @property
    def nodes(self) -> dict[str, Any]:
        """Every node's engine (as given: Engine or AsyncEngine), by name."""
        return dict(self._given)

    @property
    def primary_name(self) -> str | None:
        """The node writes go to now (None while no primary is known)."""
        return self._router.core.primary

    @contextlib.contextmanager
    def use_primary(self) -> Iterator[None]:
        """Send every statement of this context (thread or task) to the primary.

        >>> with pool.use_primary():  # doctest: +SKIP
        ...     session.scalar(select(Order.total))   # the primary, freshest data
        """
        with self._router.forced(Target.PRIMARY):
            yield

    @contextlib.contextmanager
    def use_replica(self) -> Iterator[None]:
        """Read from replicas in this context, ignoring stickiness; writes raise.

        Raises:
            ReadOnlyViolation: a statement that writes, inside the block.
        """
        with self._router.forced(Target.REPLICA):
            yield

    def import_token(self, token: str | ConsistencyToken | None) -> None:
        """Adopt a token exported by :meth:`export_token` (a cookie, header, job payload).

        Reads in this context then see at least everything the token covers.
        ``None`` or ``""`` does nothing.

        Raises:
            ConfigurationError: (``parameter="token"``) for a malformed token.
        """
        if token is None or token == "":
            return
        if isinstance(token, str):
            token = ConsistencyToken.decode(token)
        elif not isinstance(token, ConsistencyToken):
            raise ConfigurationError(
                f"token must be a str or ConsistencyToken, got {type(token).__name__}",
                parameter="token",
            )
        self._router.set_token(token)

    def reset_context(self) -> None:
        """Forget this context's token and pending writes (e.g. at the end of a request)."""
        from scalekit.routing._core import EMPTY_CONTEXT

        self._router.var.set(EMPTY_CONTEXT)

    def health(self) -> dict[str, Any]:
        """Per node: role, up, lag (seconds, bytes), pool size/checked-out/overflow/usage.

        Reports what the pool knows, without I/O (call ``refresh()`` first for
        fresh lag). URLs are masked. ``warnings`` holds "pool usage above
        80%"/"95%" and lag notes.
        """
        return self._router.health()

    def close(self) -> None:
        """Detach from the engines (remove event listeners); the engines stay open: yours."""
        self._router.close()
