"""Statements for batch inserts: PostgreSQL SQL text and SQLAlchemy Core statements.

Pure: builds strings and statement objects, executes nothing.

PostgreSQL writes go through psycopg directly (COPY has no SQLAlchemy
equivalent, and ``unnest`` arrays bind one parameter per column). Every
statement that needs more than a bare COPY has the same shape: a *source*
(a staging table filled by COPY, or ``unnest(%s::type[], ...) WITH
ORDINALITY``) with an ordinal column, and an ``INSERT ... SELECT`` from it
(``ORDER BY`` the ordinal when returned rows are matched by position).
Counts of inserted versus updated rows come from ``RETURNING (xmax = 0)`` (a
row version made by this transaction's INSERT has no deleting transaction);
a DO NOTHING returning nothing is counted by its row count alone (every row
it wrote was inserted), without the RETURNING;
returned keys are joined back to the source by the
conflict key, so each maps to its input row even when DO NOTHING skips some.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from scalekit.batch._core import ConflictPlan, TableShape, quote_ident
from scalekit.errors import ConfigurationError

__all__ = [
    "CONSTRAINT_SQL",
    "ORD",
    "REFLECT_SQL",
    "STAGE",
    "PgStatements",
    "SaStatements",
]

ORD = "__sk_ord"
STAGE = "_scalekit_stage"
_INSERTED = "__sk_inserted"
_MARK = "\x00source\x00"

#: Loaded columns' base type OIDs (domains resolved) and declared types.
REFLECT_SQL = (
    "SELECT a.attname, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,"
    " format_type(a.atttypid, a.atttypmod)"
    " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
    " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
)

#: The columns of a named unique constraint, in key order (bind ``table``, ``name``).
CONSTRAINT_SQL = (
    "SELECT a.attname FROM pg_constraint c"
    " CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)"
    " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum"
    " WHERE c.conrelid = to_regclass(:table) AND c.conname = :name AND c.contype IN ('p', 'u')"
    " ORDER BY k.n"
)

#: What a PostgreSQL write statement's result rows mean.
ResultKind = Literal["rowcount", "inserted", "ordered", "counts", "joined"]


@dataclass(frozen=True, slots=True)
class PgStatements:
    """The SQL of one load on PostgreSQL, built once.

    ``kind`` says how to read the write statement's result: ``"rowcount"``
    (plain insert), ``"inserted"`` (a DO NOTHING: its row count is the rows
    inserted, the rest were skipped), ``"ordered"`` (returned rows in input order),
    ``"counts"`` (one row: inserted, inserted + updated), ``"joined"``
    (rows of ordinal, returned values..., inserted flag).
    """

    copy: str
    copy_text: str
    create_stage: str
    copy_stage: str
    copy_stage_text: str
    drop_stage: str
    from_stage: str
    from_unnest: str
    kind: ResultKind
    #: Whether the staging table has the ordinal column first (only the
    #: statements matching returned rows to input rows read it).
    stage_ordinal: bool = True

    @classmethod
    def build(
        cls,
        shape: TableShape,
        columns: Sequence[str],
        types: Sequence[str],
        conflict: ConflictPlan | None,
        returning: Sequence[str] | None,
        match_key: Sequence[str] = (),
    ) -> PgStatements:
        """Build every statement of one load.

        ``match_key``: for a plain insert with ``returning``, a loaded key
        (the primary key) through which returned rows are joined back to their
        input rows; without one they are matched by position.
        """
        target = shape.qualified_name
        qualifier = quote_ident(shape.name)
        cols = ", ".join(quote_ident(c) for c in columns)
        copy = f"COPY {target} ({cols}) FROM STDIN (FORMAT BINARY)"
        copy_text = f"COPY {target} ({cols}) FROM STDIN"
        stage_cols = ", ".join(f"{quote_ident(c)} {t}" for c, t in zip(columns, types, strict=True))
        stage = f"pg_temp.{quote_ident(STAGE)}"
        # Returned rows are matched to input rows through the ordinal; a load
        # returning nothing (a count at most) stages the rows alone.
        stage_ordinal = bool(returning)
        ordinal = f"{quote_ident(ORD)} int8, " if stage_ordinal else ""
        create_stage = (
            f"CREATE TEMPORARY TABLE {quote_ident(STAGE)} ({ordinal}{stage_cols}) ON COMMIT DROP"
        )
        stage_list = f"{quote_ident(ORD)}, {cols}" if stage_ordinal else cols
        copy_stage = f"COPY {stage} ({stage_list}) FROM STDIN (FORMAT BINARY)"
        copy_stage_text = f"COPY {stage} ({stage_list}) FROM STDIN"
        drop_stage = f"DROP TABLE {stage}"
        # The unnest statement carries psycopg placeholders: every other "%" is doubled.
        arrays = ", ".join(f"%s::{t.replace('%', '%%')}[]" for t in types)
        unnest_source = (
            f"unnest({arrays}) WITH ORDINALITY"
            f" AS src({cols.replace('%', '%%')}, {quote_ident(ORD)})"
        )

        conflict_sql = ""
        if conflict is not None:
            if conflict.constraint is not None:
                conflict_sql = f" ON CONFLICT ON CONSTRAINT {quote_ident(conflict.constraint)}"
            elif conflict.key:
                keys = ", ".join(quote_ident(c) for c in conflict.key)
                conflict_sql = f" ON CONFLICT ({keys})"
            else:
                conflict_sql = " ON CONFLICT"
            if conflict.action == "nothing":
                conflict_sql += " DO NOTHING"
            else:
                sets = ", ".join(
                    [f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in conflict.update]
                    + [
                        f"{c} = {qualifier}.{c} + EXCLUDED.{c}"
                        for c in map(quote_ident, conflict.increment)
                    ]
                )
                conflict_sql += f" DO UPDATE SET {sets}"
                if conflict.where:
                    conflict_sql += f" WHERE {conflict.where}"

        def write(source: str, *, placeholders: bool) -> str:
            # Built around a marker, then escaped for psycopg when the source
            # has placeholders, then the source put in (never str.format: a
            # condition may hold braces).
            text = template()
            if placeholders:
                text = text.replace("%", "%%")
            return text.replace(_MARK, source)

        def template() -> str:
            # Only a plain insert returning values needs the input order (its
            # RETURNING rows are matched to input rows by position); the sort
            # costs ~15% of an upsert, so the other shapes skip it.
            by_position = conflict is None and bool(returning) and not match_key
            order = f" ORDER BY {quote_ident(ORD)}" if by_position else ""
            insert = (
                f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {_MARK}{order}{conflict_sql}"
            )
            if not returning and (conflict is None or conflict.action == "nothing"):
                # A DO NOTHING writes only inserted rows: its row count splits
                # inserted from skipped; RETURNING would cost ~2.5% more server work.
                return insert
            if by_position:
                assert returning
                ret = ", ".join(f"{qualifier}.{quote_ident(c)}" for c in returning)
                return insert + f" RETURNING {ret}"
            flag = f"({qualifier}.xmax = 0) AS {quote_ident(_INSERTED)}"
            key = conflict.key if conflict is not None else tuple(match_key)
            if not returning:
                return (
                    f"WITH ins AS ({insert} RETURNING {flag})"
                    f" SELECT count(*) FILTER (WHERE {quote_ident(_INSERTED)}), count(*) FROM ins"
                )
            ret_items = [
                f"{qualifier}.{quote_ident(c)} AS {quote_ident(f'__sk_r{i}')}"
                for i, c in enumerate(returning)
            ]
            key_items = [
                f"{qualifier}.{quote_ident(c)} AS {quote_ident(f'__sk_k{i}')}"
                for i, c in enumerate(key)
            ]
            join = " AND ".join(
                f"s.{quote_ident(c)} = ins.{quote_ident(f'__sk_k{i}')}" for i, c in enumerate(key)
            )
            picked = ", ".join(f"ins.{quote_ident(f'__sk_r{i}')}" for i in range(len(returning)))
            return (
                f"WITH s AS MATERIALIZED (SELECT * FROM {_MARK}),"
                f" ins AS ({insert.replace(_MARK, 's')}"
                f" RETURNING {', '.join(ret_items + key_items)}, {flag})"
                f" SELECT s.{quote_ident(ORD)}, {picked}, ins.{quote_ident(_INSERTED)}"
                f" FROM ins LEFT JOIN s ON {join}"
            )

        if conflict is None and not returning:
            kind: ResultKind = "rowcount"
        elif conflict is not None and conflict.action == "nothing" and not returning:
            kind = "inserted"
        elif conflict is None and not match_key:
            kind = "ordered"
        elif not returning:
            kind = "counts"
        else:
            kind = "joined"
        return cls(
            copy=copy,
            copy_text=copy_text,
            create_stage=create_stage,
            copy_stage=copy_stage,
            copy_stage_text=copy_stage_text,
            drop_stage=drop_stage,
            from_stage=write(stage, placeholders=False),
            from_unnest=write(unnest_source, placeholders=True),
            kind=kind,
            stage_ordinal=stage_ordinal,
        )


@dataclass(frozen=True, slots=True)
class SaStatements:
    """SQLAlchemy Core statements of one load on a dialect without the PostgreSQL fast paths.

    ``insert`` takes a list of parameter dicts (executemany); ``insert_one``
    one dict, with RETURNING (used row by row when conflicts and returned
    keys are both wanted, since skipped rows leave gaps RETURNING cannot
    place); ``existing`` selects the conflict keys already in the table;
    ``insert_counting`` (PostgreSQL upserts) returns one ``xmax = 0`` flag per
    row written.
    """

    insert: Any
    insert_one: Any
    param_keys: tuple[str, ...]
    key_columns: tuple[Any, ...]
    insert_counting: Any = None

    @classmethod
    def build(
        cls,
        shape: TableShape,
        columns: Sequence[str],
        conflict: ConflictPlan | None,
        returning: Sequence[str] | None,
        dialect: str,
    ) -> SaStatements:
        import sqlalchemy as sa

        table = shape.table
        param_keys = tuple(table.c[c].key for c in columns)
        if conflict is None:
            statement: Any = sa.insert(table)
        else:
            dialect_insert: Any
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert as sqlite_insert

                dialect_insert = sqlite_insert
            elif dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                dialect_insert = pg_insert
            else:
                raise ConfigurationError(
                    f"on_conflict is supported on PostgreSQL and SQLite, not {dialect}",
                    parameter="on_conflict",
                )
            if conflict.constraint is not None and dialect != "postgresql":
                raise ConfigurationError(
                    "Upsert(constraint=...) needs PostgreSQL; use index=[...]",
                    parameter="constraint",
                )
            statement = dialect_insert(table)
            target: dict[str, Any] = {}
            if conflict.constraint is not None:
                target = {"constraint": conflict.constraint}
            elif conflict.key:
                target = {"index_elements": list(conflict.key)}
            if conflict.action == "nothing":
                statement = statement.on_conflict_do_nothing(**target)
            else:
                excluded = statement.excluded
                statement = statement.on_conflict_do_update(
                    **target,
                    set_={
                        **{table.c[c].key: excluded[table.c[c].key] for c in conflict.update},
                        **{
                            table.c[c].key: table.c[c] + excluded[table.c[c].key]
                            for c in conflict.increment
                        },
                    },
                    where=sa.text(conflict.where) if conflict.where else None,
                )
        ret = [table.c[c] for c in returning] if returning else []
        insert = statement
        if ret and conflict is None:
            insert = statement.returning(*ret, sort_by_parameter_order=True)
        insert_one = statement.returning(*ret) if ret else statement
        key_columns = tuple(table.c[c] for c in conflict.key) if conflict is not None else ()
        # psycopg reports no rowcount for an executemany: count PostgreSQL's
        # upserts from RETURNING (xmax = 0), true for an inserted row.
        counting = None
        if conflict is not None and dialect == "postgresql":
            counting = statement.returning(sa.literal_column("(xmax = 0)"))
        return cls(
            insert=insert,
            insert_one=insert_one,
            param_keys=param_keys,
            key_columns=key_columns,
            insert_counting=counting,
        )

    def existing(self, keys: Sequence[tuple[Any, ...]]) -> Any:
        """``SELECT key FROM table WHERE key IN (...)`` for the given key tuples."""
        import sqlalchemy as sa

        if len(self.key_columns) == 1:
            return sa.select(self.key_columns[0]).where(
                self.key_columns[0].in_([k[0] for k in keys])
            )
        return sa.select(*self.key_columns).where(sa.tuple_(*self.key_columns).in_(keys))
