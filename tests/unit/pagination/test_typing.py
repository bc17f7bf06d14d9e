"""``Page`` is generic in its items, and a bare ``Page`` is ``Page[Any]`` (checked by mypy)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api as mypy_api

SNIPPET = textwrap.dedent(
    """
    from typing import Any

    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    from scalekit.pagination import Page, apaginate, iter_pages, paginate


    class Base(DeclarativeBase):
        pass


    class Order(Base):
        __tablename__ = "orders"
        id: Mapped[int] = mapped_column(primary_key=True)


    def first_page(session: Session) -> Page[Order]:
        return paginate(session, sa.select(Order), order_by=[Order.id], limit=10)


    def untyped(session: Session) -> Page:
        return paginate(session, sa.select(Order), order_by=[Order.id])


    def use(session: Session) -> None:
        page = first_page(session)
        reveal_type(page.items)
        for order in page:
            reveal_type(order)
        reveal_type(paginate(session, sa.select(Order), order_by=[Order.id]))
        reveal_type(untyped(session).items)
        reveal_type(next(iter_pages(session, sa.select(Order), order_by=[Order.id])))
        page.items.append("not an order")
    """
)


def test_page_items_take_the_type_the_caller_names(tmp_path: Path) -> None:
    module = tmp_path / "pagination_types.py"
    module.write_text(SNIPPET)
    stdout, _, _ = mypy_api.run(["--strict", "--no-error-summary", str(module)])
    lines = [
        line.split(": ", 1)[1].replace("builtins.", "")
        for line in stdout.splitlines()
        if ": " in line
    ]
    assert lines == [
        'note: Revealed type is "list[pagination_types.Order]"',
        'note: Revealed type is "pagination_types.Order"',
        'note: Revealed type is "scalekit.pagination._keyset.Page[Any]"',
        'note: Revealed type is "list[Any]"',
        'note: Revealed type is "scalekit.pagination._keyset.Page[Any]"',
        'error: Argument 1 to "append" of "list" has incompatible type "str"; expected "Order"'
        "  [arg-type]",
    ], stdout
