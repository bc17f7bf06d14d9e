"""Hit sequences replayed through two stores at once, decision by decision.

Used to check that the Lua scripts mirror the pure core exactly: the memory
backend runs :mod:`scalekit.ratelimit._core`, a Redis backend (fakeredis here,
the real server in ``tests/integration``) runs ``_lua/*.lua``, both given the
same virtual ``now`` (whole microseconds, like Redis ``TIME``).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from scalekit.ratelimit._core import ALGORITHMS, Limit, Outcome, storage_key

START = 1_700_000_000_000_000.0
PERIODS_US = (1_000, 333_333, 1_000_000, 7_000_001, 60_000_000)
DELTAS_US = (0.0, 0.0, 1.0, 7.0, 1_000.0, 90_001.0, 333_334.0, 1e6, 3.3e6, 6e7)


@dataclass(frozen=True, slots=True)
class Step:
    """One operation: advance the clock, then hit (or peek) every limit of the scenario."""

    delta: float  # >= 0: microseconds to advance; < 0: to just before the next allowance
    cost: int
    write: bool


@dataclass(frozen=True, slots=True)
class Scenario:
    algorithm: str
    limits: tuple[Limit, ...]
    consume_denied: bool
    steps: tuple[Step, ...]

    def keys(self, namespace: str, key: str) -> list[str]:
        return [storage_key(namespace, self.algorithm, key, limit) for limit in self.limits]

    def params(self) -> list[tuple[float, float, float]]:
        return [limit.params(self.algorithm) for limit in self.limits]


def random_scenario(seed: int, algorithm: str | None = None, length: int = 60) -> Scenario:
    """A reproducible scenario: 1-2 small limits and ``length`` steps."""
    rng = random.Random(seed)
    algorithm = algorithm or rng.choice(ALGORITHMS)
    limits: list[Limit] = []
    for _ in range(rng.choice((1, 1, 2))):
        amount = rng.randint(1, 12)
        extra = rng.randint(0, 5) if algorithm in ("gcra", "token_bucket") else 0
        period = rng.choice(PERIODS_US) / 1e6
        limit = Limit(amount, per=period, burst=amount + extra)
        if limit not in limits:
            limits.append(limit)
    capacity = min(limit.burst for limit in limits)
    steps = []
    for _ in range(length):
        if rng.random() < 0.3:
            delta = -float(rng.choice((1, 1, 2, 11, 1001)))
        else:
            delta = rng.choice(DELTAS_US)
        steps.append(Step(delta, rng.randint(0, min(3, capacity)), rng.random() > 0.1))
    return Scenario(algorithm, tuple(limits), rng.random() < 0.25, tuple(steps))


def single_limit(scenario: Scenario) -> Scenario:
    """The scenario against its first limit only (the lean one-limit scripts)."""
    return dataclasses.replace(scenario, limits=scenario.limits[:1])


Evaluate = Callable[[Scenario, list[str], float, Step], Outcome]
AsyncEvaluate = Callable[[Scenario, list[str], float, Step], Awaitable[Outcome]]


def evaluator(backend: object) -> Evaluate:
    """Wrap a sync backend's ``evaluate`` for :func:`replay`."""

    def run(scenario: Scenario, keys: list[str], now: float, step: Step) -> Outcome:
        return backend.evaluate(  # type: ignore[attr-defined, no-any-return]
            scenario.algorithm,
            keys,
            scenario.params(),
            float(step.cost),
            consume_denied=scenario.consume_denied,
            write=step.write,
            now=now,
        )

    return run


def _next_time(now: float, step: Step, peek: Outcome) -> float:
    if step.delta >= 0:
        return now + step.delta
    # Just before (or exactly at) the moment a hit of 1 becomes allowed.
    wait = -(-peek.retry_after // 1)  # ceil
    return now + max(wait + step.delta + 1, 0.0)


def replay(scenario: Scenario, reference: Evaluate, other: Evaluate, key: str) -> int:
    """Run ``scenario`` through both; assert identical outcomes. Returns the steps run."""
    ref_keys = scenario.keys("parity-ref", key)
    other_keys = scenario.keys("parity-other", key)
    now = START
    for number, step in enumerate(scenario.steps):
        peek = reference(scenario, ref_keys, now, Step(0, 1, write=False))
        now = _next_time(now, step, peek)
        expected = reference(scenario, ref_keys, now, step)
        actual = other(scenario, other_keys, now, step)
        assert actual == expected, (number, step, now, scenario)
    return len(scenario.steps)


async def areplay(scenario: Scenario, reference: Evaluate, other: AsyncEvaluate, key: str) -> int:
    """:func:`replay` with an asyncio ``other``."""
    ref_keys = scenario.keys("parity-ref", key)
    other_keys = scenario.keys("parity-other", key)
    now = START
    for number, step in enumerate(scenario.steps):
        peek = reference(scenario, ref_keys, now, Step(0, 1, write=False))
        now = _next_time(now, step, peek)
        expected = reference(scenario, ref_keys, now, step)
        actual = await other(scenario, other_keys, now, step)
        assert actual == expected, (number, step, now, scenario)
    return len(scenario.steps)
