"""Routing from the statement object: which statements write, and by which rule."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scalekit.routing import ROUTE_OPTION, classify, read_only, route_to_primary


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


accounts = Account.__table__
log = sa.table("log", sa.column("id"), sa.column("msg"))

CASES: list[tuple[str, Any, bool, str]] = [
    ("core select", sa.select(accounts), False, "select"),
    ("orm select", sa.select(Account).where(Account.id == 1), False, "select"),
    ("join and order", sa.select(Account).join(log, log.c.id == Account.id), False, "select"),
    ("aggregate", sa.select(sa.func.count()).select_from(accounts), False, "select"),
    ("union", sa.union(sa.select(accounts.c.id), sa.select(log.c.id)), False, "select"),
    ("subquery", sa.select(sa.select(accounts.c.id).subquery()), False, "select"),
    ("exists", sa.select(sa.exists().where(accounts.c.id == 1)), False, "select"),
    ("core insert", sa.insert(accounts).values(id=1, balance=0), True, "insert"),
    ("orm bulk update", sa.update(Account).values(balance=1), True, "update"),
    ("orm bulk delete", sa.delete(Account).where(Account.id == 1), True, "delete"),
    (
        "insert from select",
        sa.insert(log).from_select(["id"], sa.select(accounts.c.id)),
        True,
        "insert",
    ),
    ("for update", sa.select(Account).with_for_update(), True, "for_update"),
    (
        "for update in a subquery",
        sa.select(sa.select(accounts.c.id).with_for_update().subquery()),
        True,
        "for_update",
    ),
    ("nextval", sa.select(sa.func.nextval("seq")), True, "function:nextval"),
    ("setval", sa.select(sa.func.setval("seq", 5)), True, "function:setval"),
    ("advisory lock", sa.select(sa.func.pg_advisory_lock(42)), True, "function:pg_advisory_lock"),
    (
        "nested function",
        sa.select(sa.func.coalesce(sa.func.nextval("s"), 0)),
        True,
        "function:nextval",
    ),
    (
        "function in where",
        sa.select(accounts).where(accounts.c.id == sa.func.NEXTVAL("s")),
        True,
        "function:nextval",
    ),
    ("harmless function", sa.select(sa.func.now(), sa.func.lower("X")), False, "select"),
    (
        "dml in a cte",
        sa.select(sa.insert(log).values(id=1).returning(log.c.id).cte("ins")),
        True,
        "embedded_insert",
    ),
    (
        "dml cte used through its columns",
        sa.select(sa.insert(log).values(id=1).returning(log.c.id).cte("ins").c.id),
        True,
        "embedded_insert",
    ),
    (
        "subquery columns",
        sa.select(sa.select(accounts.c.id).subquery().c.id),
        False,
        "select",
    ),
    ("text read", sa.text("SELECT 1"), False, "text_read"),
    ("text write", sa.text("UPDATE t SET x = 1"), True, "text"),
    ("text marked read-only", read_only(sa.text("UPDATE t SET x = 1")), False, "marked_read_only"),
    ("textual select", sa.text("SELECT 1").columns(sa.column("x")), False, "text_read"),
    (
        "textual select that locks",
        sa.text("SELECT id FROM t FOR UPDATE").columns(sa.column("id")),
        True,
        "text:update",
    ),
    (
        "text marked write",
        sa.text("SELECT 1").execution_options(scalekit_route="write"),
        True,
        "forced_primary",
    ),
    (
        "text marked read",
        sa.text("SELECT f()").execution_options(scalekit_route="read"),
        False,
        "marked_read_only",
    ),
    ("select forced to primary", route_to_primary(sa.select(accounts)), True, "forced_primary"),
    (
        "option by hand",
        sa.select(accounts).execution_options(**{ROUTE_OPTION: "primary"}),
        True,
        "forced_primary",
    ),
    ("flush or session.connection()", None, True, "connection"),
]


@pytest.mark.parametrize(
    ("statement", "writes", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_classify(statement: Any, writes: bool, reason: str) -> None:
    result = classify(statement)
    assert (result.writes, result.reason) == (writes, reason)


def test_read_only_returns_a_copy() -> None:
    original = sa.text("DELETE FROM t")
    marked = read_only(original)
    assert marked is not original
    assert classify(original).writes


def test_pathological_statement_is_routed_safely() -> None:
    condition = sa.and_(*[accounts.c.id == i for i in range(6000)])
    result = classify(sa.select(accounts).where(condition))
    assert result.reason in ("select", "too_complex")
