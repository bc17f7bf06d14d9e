"""Raw SQL text: unmistakable reads go to replicas, anything doubtful is a write.

A table of cases, then hypothesis: the rule never raises, a write word outside
strings and comments always makes a write, and words inside strings, comments
and quoted identifiers never do.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError
from scalekit.routing import ROUTE_OPTION, classify
from scalekit.routing._sqltext import READ_STARTS, WRITE_WORDS
from scalekit.routing._statements import WRITE_FUNCTIONS, classify_text

READS = [
    "SELECT 1",
    "  select id, body FROM notes WHERE id = :id;  ",
    "SELECT 1; -- done",
    "WITH recent AS (SELECT * FROM orders WHERE created > now() - interval '1 day') "
    "SELECT count(*) FROM recent",
    "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT * FROM t",
    "SHOW server_version",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t",
    "VALUES (1), (2)",
    "TABLE orders",
    "(SELECT 1) UNION (SELECT 2)",
    "SELECT 'DELETE FROM t; UPDATE x' AS s",
    "SELECT $$ INSERT INTO t $$, $body$ UPDATE $$ $body$",
    "SELECT E'it\\'s UPDATE' AS s",
    "SELECT 1 /* UPDATE t /* nested DELETE */ still a comment */",
    "SELECT 1 -- FOR UPDATE\n",
    'SELECT "update", "into" FROM "delete"',
    "SELECT id FROM t WHERE body ~ '\\d+' AND x = $1",
    "SELECT comment, lock_timeout, updated_at, shares, intotal FROM t",
    "SELECT x FROM t ORDER BY x FETCH FIRST 10 ROWS ONLY",
    "SELECT u&'\\0041' , U&\"d\\0061t\\+000061\" FROM t",
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text",
]

WRITES = [
    ("INSERT INTO t VALUES (1)", "text"),
    ("UPDATE t SET x = 1", "text"),
    ("delete from t", "text"),
    ("SELECT * FROM t FOR UPDATE", "text:update"),
    ("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", "text:update"),
    ("SELECT * FROM t FOR SHARE", "text:share"),
    ("SELECT * FROM t FOR KEY SHARE", "text:share"),
    ("WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d", "text:delete"),
    ("WITH i AS (INSERT INTO t VALUES (1) RETURNING id) SELECT id FROM i", "text:insert"),
    ("SELECT * INTO new_table FROM t", "text:into"),
    ("SELECT nextval('s')", "function:nextval"),
    ("SELECT pg_catalog.setval('s', 5)", "function:setval"),
    ("SELECT pg_advisory_lock(42)", "function:pg_advisory_lock"),
    ("SELECT pg_try_advisory_xact_lock(1)", "function:pg_try_advisory_xact_lock"),
    ("EXPLAIN ANALYZE DELETE FROM t", "text:delete"),
    ("EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", "text:create"),
    ("SELECT 1; DELETE FROM t", "text:several_statements"),
    ("SELECT 1; SELECT 2", "text:several_statements"),
    ("SELECT 'unterminated", "text:unfinished"),
    ("SELECT 1 /* unterminated", "text:unfinished"),
    ('SELECT "unterminated', "text:unfinished"),
    ("SELECT $$ unterminated", "text:unfinished"),
    ("", "text"),
    ("-- only a comment", "text"),
    ("SET statement_timeout = 0", "text"),
    ("CALL do_things()", "text"),
    ("COPY t TO STDOUT", "text"),
    ("LOCK TABLE t", "text"),
    ("VACUUM t", "text"),
    ("ANALYZE t", "text"),
    ("BEGIN", "text"),
    ("DO $$ BEGIN PERFORM 1; END $$", "text"),
    # standard_conforming_strings=off reads 'a\' as unfinished: doubtful, so a write.
    ("SELECT 'a\\' ; DELETE FROM t; --'", "text:several_statements"),
]


@pytest.mark.parametrize("sql", READS)
def test_unmistakable_reads(sql: str) -> None:
    assert classify_text(sql).writes is False, sql
    assert classify(sa.text(sql)).writes is False


@pytest.mark.parametrize(("sql", "reason"), WRITES)
def test_anything_doubtful_is_a_write(sql: str, reason: str) -> None:
    result = classify_text(sql)
    assert (result.writes, result.reason) == (True, reason), sql


def test_an_execution_option_settles_any_statement() -> None:
    assert classify(sa.text("SELECT my_fn()").execution_options(scalekit_route="write")).writes
    assert not classify(sa.text("DELETE FROM t").execution_options(scalekit_route="read")).writes
    for legacy, writes in (("primary", True), ("replica", False)):
        assert classify(sa.text("SELECT 1").execution_options(**{ROUTE_OPTION: legacy})).writes is (
            writes
        )
    with pytest.raises(ConfigurationError, match="scalekit_route") as info:
        classify(sa.select(sa.literal(1)).execution_options(scalekit_route="reed"))
    assert info.value.parameter == "scalekit_route"


# -- hypothesis -------------------------------------------------------------------------------

WRITE_ANYWHERE = sorted(WRITE_WORDS | WRITE_FUNCTIONS)
PLAIN_WORDS = ["id", "t", "body", "from", "where", "and", "comment", "e", "x", "u", "n", "b", "as"]
CONTENT = st.lists(
    st.sampled_from(
        [" ", "a", "'", '"', ";", "-", "/", "*", "$", "\n", "DELETE", "update", "into", "nextval"]
    ),
    max_size=12,
).map("".join)


def _string(content: str) -> str:
    return "'" + content.replace("'", "''") + "'"


def _dollar(content: str) -> str:
    return "$q$" + content.replace("$q$", "") + "$q$"


def _line_comment(content: str) -> str:
    return "--" + content.replace("\n", " ") + "\n"


def _block_comment(content: str) -> str:
    return "/*" + content.replace("/*", "").replace("*/", "").rstrip("/") + "*/"


def _quoted(content: str) -> str:
    return '"' + content.replace('"', '""') + '"'


HIDDEN = st.one_of(
    CONTENT.map(_string),
    CONTENT.map(_dollar),
    CONTENT.map(_line_comment),
    CONTENT.map(_block_comment),
    CONTENT.map(_quoted),
)
BARE = st.sampled_from(PLAIN_WORDS + sorted(READ_STARTS) + WRITE_ANYWHERE)
PUNCTUATION = st.sampled_from([",", "(", ")", "=", "*", "1", ":name", "$1", "::int", "."])
# (text, is a bare word) fragments: strings, comments and quoted identifiers are not.
FRAGMENT = st.one_of(
    BARE.map(lambda w: (w, True)),
    HIDDEN.map(lambda h: (h, False)),
    PUNCTUATION.map(lambda p: (p, False)),
)


@given(st.text(max_size=200))
@settings(max_examples=500)
def test_the_classifier_never_raises(sql: str) -> None:
    result = classify_text(sql)
    assert isinstance(result.writes, bool)


@given(st.sampled_from(sorted(READ_STARTS)), st.lists(FRAGMENT, max_size=12))
@settings(max_examples=500)
def test_write_words_outside_strings_and_comments_decide(
    start: str, fragments: list[tuple[str, bool]]
) -> None:
    sql = " ".join([start, *(text for text, _ in fragments)])
    bare = [text.lower() for text, is_word in fragments if is_word]
    result = classify_text(sql)
    if any(word in WRITE_WORDS or word in WRITE_FUNCTIONS for word in bare):
        assert result.writes, sql
    else:
        # What hides in strings, comments and quoted identifiers never makes a write.
        assert not result.writes, (sql, result.reason)


@given(st.lists(FRAGMENT, max_size=12), st.sampled_from(WRITE_ANYWHERE))
@settings(max_examples=300)
def test_a_write_word_anywhere_outside_strings_is_a_write(
    fragments: list[tuple[str, bool]], word: str
) -> None:
    texts = [text for text, _ in fragments]
    position = len(texts) // 2
    sql = " ".join(["SELECT", *texts[:position], word.upper(), *texts[position:]])
    assert classify_text(sql).writes, sql
