"""The blocking shell's helper thread (issue 20): it hands back the call's value
or its error, and runs in a copy of the caller's context."""

from __future__ import annotations

import contextvars
import threading

import pytest

from scalekit.batch._base import Background

current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="none")


def test_the_value_comes_back() -> None:
    assert Background(lambda a, b: a + b, 2, 3).result() == 5


def test_the_error_is_raised_in_the_waiting_thread() -> None:
    def fail() -> None:
        raise KeyError("gone")

    background = Background(fail)
    with pytest.raises(KeyError, match="gone"):
        background.result()


def test_the_call_sees_the_callers_context_in_another_thread() -> None:
    token = current.set("caller")
    try:
        seen = Background(lambda: (current.get(), threading.get_ident())).result()
    finally:
        current.reset(token)
    assert seen[0] == "caller"
    assert seen[1] != threading.get_ident()
