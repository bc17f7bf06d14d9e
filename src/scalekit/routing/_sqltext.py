"""Classify raw SQL text for routing: an unmistakable read, or (in every other case) a write.

A ``text()`` statement, or SQL given to ``exec_driver_sql``, is read as
PostgreSQL's lexer reads it, far enough to tell words from the rest: comments
(``--``, nested ``/* */``), string literals (``'...'``, ``E'...'``,
dollar-quoted ``$tag$...$tag$``) and quoted identifiers (``"update"``) are
skipped, so nothing inside them counts. The text is a read when

* it is one statement (a trailing ``;`` is fine), and
* its first word is ``SELECT``, ``WITH``, ``SHOW``, ``EXPLAIN``, ``VALUES`` or
  ``TABLE`` (after any opening parentheses), and
* no word outside strings and comments is one of :data:`WRITE_WORDS` (DML in
  a CTE or under ``EXPLAIN ANALYZE``, ``SELECT ... INTO``, ``FOR UPDATE`` /
  ``FOR NO KEY UPDATE`` / ``FOR SHARE`` / ``FOR KEY SHARE``, ...) or a function
  of :data:`~scalekit.routing._statements.WRITE_FUNCTIONS` (``nextval``,
  ``setval``, advisory locks...).

Anything else is a write, including text the lexer cannot finish (an
unterminated string or comment). Whether a backslash escapes a quote depends
on the server's ``standard_conforming_strings``; the text is lexed both ways
and is a read only if both readings say so. A function of your own that
writes cannot be seen from its name: mark such statements with
``scalekit_route="write"``.

The rule never raises (a hypothesis test feeds it arbitrary text).
"""

from __future__ import annotations

import re

__all__ = ["READ_STARTS", "WRITE_WORDS", "classify_sql", "sql_words"]

READ_STARTS: frozenset[str] = frozenset({"select", "with", "show", "explain", "values", "table"})
"""First words of a statement that may be a read."""

WRITE_WORDS: frozenset[str] = frozenset(
    {
        "insert",
        "update",  # also FOR UPDATE, FOR NO KEY UPDATE
        "delete",
        "merge",
        "into",  # SELECT ... INTO creates a table
        "share",  # FOR SHARE, FOR KEY SHARE
        "create",  # EXPLAIN ANALYZE CREATE TABLE ... AS
        "execute",
        "declare",
        "copy",
        "truncate",
        "drop",
        "alter",
        "grant",
        "revoke",
        "lock",
        "call",
        "do",
        "vacuum",
        "refresh",
        "prepare",
        "notify",
        "listen",
    }
)
"""Words that make a statement a write wherever they appear outside strings and comments."""

_WORD = re.compile(r"[^\W\d][\w$]*")
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")


class _Unfinished(Exception):
    """The text ends inside a string, a quoted identifier or a comment."""


def sql_words(sql: str, *, backslash_escapes: bool = False) -> tuple[list[str], bool]:
    """The lower-cased words of ``sql`` outside strings, comments and quoted identifiers.

    Returns ``(words, several)``: ``several`` is true when a ``;`` is followed
    by more SQL (more than one statement).

    Raises:
        _Unfinished: the text ends inside a string, identifier or comment.
    """
    words: list[str] = []
    several = False
    ended = False  # a ';' was seen
    index = 0
    length = len(sql)
    while index < length:
        char = sql[index]
        if char.isspace():
            index += 1
            continue
        if char == "-" and sql.startswith("--", index):
            newline = sql.find("\n", index)
            index = length if newline < 0 else newline + 1
            continue
        if char == "/" and sql.startswith("/*", index):
            index = _skip_block_comment(sql, index)
            continue
        if ended and char != ";":
            several = True
        if char == "'":
            index = _skip_quoted(sql, index, "'", backslash_escapes)
            continue
        if char == '"':
            index = _skip_quoted(sql, index, '"')
            continue
        if char == "$":
            tag = _DOLLAR_TAG.match(sql, index)
            if tag is not None:
                close = sql.find(tag.group(), tag.end())
                if close < 0:
                    raise _Unfinished
                index = close + len(tag.group())
                continue
            index += 1  # a positional parameter ($1) or a stray dollar
            continue
        if char == ";":
            ended = True
            index += 1
            continue
        match = _WORD.match(sql, index)
        if match is None:
            index += 1  # punctuation, digits, operators
            continue
        word = match.group()
        index = match.end()
        if index < length and sql[index] == "'" and word.lower() in ("e", "b", "x", "n", "u"):
            # E'..' always honours backslashes; B'..', X'..', N'..' are plain strings.
            index = _skip_quoted(sql, index, "'", backslash_escapes or word.lower() == "e")
            continue
        if word.lower() == "u" and sql.startswith("&'", index):
            index = _skip_quoted(sql, index + 1, "'", backslash_escapes)
            continue
        if word.lower() == "u" and sql.startswith('&"', index):
            index = _skip_quoted(sql, index + 1, '"')
            continue
        words.append(word.lower())
    return words, several


def _skip_block_comment(sql: str, index: int) -> int:
    depth = 0
    length = len(sql)
    while index < length:
        if sql.startswith("/*", index):
            depth += 1
            index += 2
        elif sql.startswith("*/", index):
            depth -= 1
            index += 2
            if depth == 0:
                return index
        else:
            index += 1
    raise _Unfinished


def _skip_quoted(sql: str, index: int, quote: str, backslash_escapes: bool = False) -> int:
    """The index after the string or quoted identifier opened at ``index``."""
    index += 1  # the opening quote
    length = len(sql)
    while index < length:
        char = sql[index]
        if char == "\\" and backslash_escapes:
            index += 2
            continue
        if char == quote:
            if index + 1 < length and sql[index + 1] == quote:
                index += 2
                continue
            return index + 1
        index += 1
    raise _Unfinished


def _reason(sql: str, backslash_escapes: bool, write_functions: frozenset[str]) -> str | None:
    """None for an unmistakable read, else why the text counts as a write."""
    try:
        words, several = sql_words(sql, backslash_escapes=backslash_escapes)
    except _Unfinished:
        return "text:unfinished"
    if not words or words[0] not in READ_STARTS:
        return "text"
    if several:
        return "text:several_statements"
    for word in words:
        if word in WRITE_WORDS:
            return f"text:{word}"
        if word in write_functions:
            return f"function:{word}"
    return None


def classify_sql(sql: object, write_functions: frozenset[str]) -> str | None:
    """None when ``sql`` is an unmistakable read, else the reason it counts as a write.

    Never raises: anything that is not a ``str`` is a write.

    >>> from scalekit.routing._statements import WRITE_FUNCTIONS
    >>> classify_sql("SELECT 'DELETE' -- UPDATE", WRITE_FUNCTIONS) is None
    True
    >>> classify_sql("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", WRITE_FUNCTIONS)
    'text:delete'
    """
    if not isinstance(sql, str):
        return "text"
    try:
        return _reason(sql, False, write_functions) or _reason(sql, True, write_functions)
    except Exception:  # a bug here must not fail a query: doubt means the primary
        return "text"
