"""ORM and Core fixtures shared by the pagination scenario tests."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "pgn_customers"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    email: Mapped[str] = mapped_column(sa.String(50), unique=True)
    nickname: Mapped[str | None] = mapped_column(sa.String(50), unique=True)
    country: Mapped[str] = mapped_column(sa.String(2))
    orders: Mapped[list[Order]] = relationship(back_populates="customer")


class Order(Base):
    __tablename__ = "pgn_orders"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("pgn_customers.id"))
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    status: Mapped[str] = mapped_column(sa.String(10))
    amount_cents: Mapped[int]
    shipped_at: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    customer: Mapped[Customer] = relationship(back_populates="orders")


no_key = sa.Table(
    "pgn_no_key",
    Base.metadata,
    sa.Column("a", sa.Integer, nullable=False),
    sa.Column("b", sa.Integer),
)

STATUSES = ("new", "paid", "shipped", "done", "void")
T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def customers_rows() -> list[dict[str, object]]:
    return [
        {
            "id": i,
            "email": f"c{i}@x.io",
            "nickname": None if i % 2 else f"n{i}",
            "country": "FR" if i % 3 else "DE",
        }
        for i in range(1, 6)
    ]


def orders_rows(count: int = 37) -> list[dict[str, object]]:
    return [
        {
            "id": i,
            "customer_id": i % 5 + 1,
            "created_at": T0 + dt.timedelta(hours=i // 3),  # duplicates
            "status": STATUSES[i % 5],
            "amount_cents": (i % 7) * 100 + 25,
            "shipped_at": None if i % 4 == 0 else T0 + dt.timedelta(days=i % 6),
        }
        for i in range(1, count + 1)
    ]
