from __future__ import annotations

import importlib.util
import inspect
import pickle
from pathlib import Path
from types import ModuleType

import pytest

from scalekit import errors


def all_error_classes() -> list[type[BaseException]]:
    return [
        value
        for value in vars(errors).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == "scalekit.errors"
    ]


def test_every_error_derives_from_scalekit_error_and_is_exported() -> None:
    classes = all_error_classes()
    assert len(classes) >= 10
    for cls in classes:
        assert issubclass(cls, errors.ScalekitError)
        assert cls.__name__ in errors.__all__
        assert cls.__doc__


def _errors_tree() -> ModuleType:
    """scripts/errors_tree.py, which draws the tree from the code."""
    path = Path(__file__).resolve().parents[3] / "scripts" / "errors_tree.py"
    spec = importlib.util.spec_from_file_location("errors_tree", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_error_trees_in_the_docstring_and_docs_are_drawn_from_the_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The docstring's tree and docs/errors.md's are what the class hierarchy draws, every
    # error has a description there, and every attribute they name exists.
    assert _errors_tree().main(["--check"]) == 0, capsys.readouterr().err


def test_the_drawn_tree_follows_the_class_hierarchy() -> None:
    tree = _errors_tree()
    assert errors.__doc__ is not None
    drawn = tree.docstring_tree(errors.__doc__)
    assert tree.draw(errors, tree.descriptions(drawn)) == drawn
    # A new error appears under its parent, with the builtin it refines, and is
    # reported until it has a description.
    module = ModuleType("scalekit.errors")
    module.ScalekitError = type("ScalekitError", (Exception,), {"__module__": module.__name__})
    module.CacheError = type("CacheError", (module.ScalekitError,), {"__module__": module.__name__})
    module.CacheFull = type(
        "CacheFull", (module.CacheError, LookupError), {"__module__": module.__name__}
    )
    new_tree = tree.draw(module, {"CacheError": "the cache failed; .namespace"})
    assert new_tree == [
        "ScalekitError",
        "└── CacheError                   the cache failed; .namespace",
        "    └── CacheFull (LookupError)",
    ]
    assert tree.problems(module, new_tree) == [
        "CacheError has no attribute .namespace",
        "CacheFull has no description in the errors module's tree",
    ]


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (errors.ConfigurationError("bad"), ValueError),
        (errors.InvalidCursor("bad"), ValueError),
        (errors.SerializationError("bad"), ValueError),
        (errors.UnknownShard("s9"), LookupError),
    ],
)
def test_errors_refine_their_builtin(error: Exception, builtin: type[Exception]) -> None:
    assert isinstance(error, builtin)
    assert isinstance(error, errors.ScalekitError)


def test_errors_carry_their_data() -> None:
    circuit = errors.CircuitOpenError("billing", 1.5)
    assert (circuit.name, circuit.retry_after) == ("billing", 1.5)
    assert "billing" in str(circuit) and "1.500" in str(circuit)
    assert "retry" not in str(errors.CircuitOpenError("billing", None))
    config = errors.ConfigurationError("window must be >= min_calls", parameter="window")
    assert config.parameter == "window"
    node = errors.NoHealthyNode("replica", ["r1", "r2"], reason="all lagging")
    assert node.tried == ("r1", "r2") and "r1, r2" in str(node) and "all lagging" in str(node)
    limit = errors.RateLimitExceeded("customer:42", 0.25, limit="100/hour")
    assert (limit.key, limit.retry_after, limit.limit) == ("customer:42", 0.25, "100/hour")
    batch = errors.BatchInsertError("chunk 3 failed", chunk_index=3, rows_written=15000)
    assert (batch.chunk_index, batch.rows_written) == (3, 15000)
    cause = RuntimeError("boom")
    retry = errors.RetryError(3, cause)
    assert retry.attempts == 3 and retry.last_exception is cause


def test_circuit_open_error_pickles_with_its_data() -> None:
    copy = pickle.loads(pickle.dumps(errors.CircuitOpenError("db", 2.0)))
    assert (copy.name, copy.retry_after) == ("db", 2.0)


# One instance of every error class that takes arguments of its own, with the
# attributes a caller reads; the others are built from a message alone.
SAMPLES: dict[str, tuple[errors.ScalekitError, dict[str, object]]] = {
    "BatchChunkError": (
        errors.BatchChunkError("refused", chunk_index=2, rows_written=10, position=20),
        {"chunk_index": 2, "rows_written": 10, "position": 20},
    ),
    "BatchInsertError": (
        errors.BatchInsertError("failed", chunk_index=1, rows_written=5),
        {"chunk_index": 1, "rows_written": 5},
    ),
    "BufferFull": (errors.BufferFull("full", pending=10), {"pending": 10}),
    "CacheUnavailable": (errors.CacheUnavailable("app"), {"namespace": "app"}),
    "CircuitOpenError": (errors.CircuitOpenError("db", 2.0), {"name": "db", "retry_after": 2.0}),
    "ClockMovedBackwards": (
        errors.ClockMovedBackwards("behind", behind_ms=250),
        {"behind_ms": 250},
    ),
    "ConcurrencyLimitExceeded": (
        errors.ConcurrencyLimitExceeded("k", 1.5, 3, 3),
        {"key": "k", "retry_after": 1.5, "limit": 3, "in_flight": 3},
    ),
    "ConfigurationError": (
        errors.ConfigurationError("bad", parameter="ttl"),
        {"parameter": "ttl"},
    ),
    "InvalidBatchRow": (
        errors.InvalidBatchRow("bad row", chunk_index=0, rows_written=0, position=7, column="id"),
        {"position": 7, "column": "id"},
    ),
    "InvalidCursor": (errors.InvalidCursor("forged", reason="tampered"), {"reason": "tampered"}),
    "NoHealthyNode": (
        errors.NoHealthyNode("replica", ["r1"], reason="down"),
        {"role": "replica", "tried": ("r1",)},
    ),
    "RateLimiterUnavailable": (
        errors.RateLimiterUnavailable("api", 0.75),
        {"name": "api", "retry_after": 0.75},
    ),
    "RateLimitExceeded": (
        errors.RateLimitExceeded("k", 0.5, limit="10/second"),
        {"key": "k", "retry_after": 0.5, "limit": "10/second"},
    ),
    "RetryError": (errors.RetryError(3, None), {"attempts": 3, "last_exception": None}),
    "FanOutError": (errors.FanOutError("failed", failures={}), {"failures": {}}),
    "StaleShardMap": (
        errors.StaleShardMap("stale", target="db1", version=3, current=4),
        {"target": "db1", "version": 3, "current": 4},
    ),
    "WorkerLeaseError": (errors.WorkerLeaseError("lost", worker=3), {"worker": 3}),
}


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_pickles_with_its_attributes(name: str) -> None:
    cls = getattr(errors, name)
    error, attributes = SAMPLES[name] if name in SAMPLES else (cls("a message"), {})
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error)
    for attribute, value in attributes.items():
        assert getattr(copy, attribute) == value
