"""Generate the sync twin of an async module: one source for both colours.

Usage::

    python scripts/unasync.py            # regenerate every sync twin
    python scripts/unasync.py --check    # exit 1 with a diff if one is stale
    python scripts/unasync.py src/scalekit/cache/_async.py   # just this one

**What is a pair.** Every ``.py`` file under ``src/`` and ``tests/`` whose
module body assigns ``__unasync__`` is a source; its twin has the same name with
the last ``async`` in the file name replaced by ``sync`` (``_async.py`` ->
``_sync.py``, ``test_cache_async.py`` -> ``test_cache_sync.py``). The twin is
written whole, starts with a do-not-edit header and is never edited by hand.

**The source file says what differs.** ``__unasync__`` is a literal dict of
renames declared in the async file itself (it is dropped from the twin)::

    __unasync__ = {
        "AsyncCache": "Cache",              # an identifier: code, docstrings, comments
        "redis.asyncio": "redis",           # a dotted name: a prefix of a dotted chain
        "asyncio.sleep": "time.sleep",      # (adds ``import time`` when needed)
        "the asyncio shell": "the sync shell",  # anything else: text in strings/comments
    }

Code that exists in one colour only is marked, and nothing else is:

A dotted key that names a whole ``module.Name`` also splits ``from module
import Name, ...`` by target module: ``"sqlalchemy.ext.asyncio.AsyncSession":
"sqlalchemy.orm.Session"`` (SQLAlchemy's and redis-py's are defaults).

- ``if IS_ASYNC:`` ... ``else:`` ... (``IS_ASYNC`` from :mod:`scalekit._unasync`)
  keeps only the ``else`` body in the twin, dedented; ``if not IS_ASYNC:``
  keeps only its body. mypy is told ``IS_ASYNC`` is always true, so the sync
  branch is type-checked where it runs: in the generated twin. In an
  expression, ``a if IS_ASYNC else b`` becomes ``b`` and ``IS_ASYNC`` ``False``.
- ``# unasync: async-only`` as the trailing comment of a statement's first
  line drops that statement (a whole ``def``, ``with`` or ``if`` included);
  on a line of a ``def`` that holds exactly one parameter (and its default)
  it drops that parameter.

Everything else follows a fixed table: ``async def``/``async with``/``async
for`` lose ``async``; ``await x`` becomes ``x`` (and ``(await x).y`` becomes
``x.y``); ``AsyncX`` becomes ``X`` (opt out with ``"AsyncX": "AsyncX"``);
``Awaitable[T]`` and ``Coroutine[A, B, T]`` become ``T``, ``AsyncGenerator[Y,
S]`` becomes ``Generator[Y, S, None]``; the async dunders, ``anext``,
``aiter``, ``aclose``, ``StopAsyncIteration``, ``asynccontextmanager``, the
clock's ``asleep`` and the asyncio primitives map to their sync peers (see
``DEFAULT_RENAMES``); ``_async`` becomes ``_sync`` in import statements. Text
(docstrings, comments, strings) gets the same renames as whole words; inside
````code spans```` and doctest lines ``await``/``async`` are dropped as in code,
and in prose ``await`` reads ``call`` (``awaits`` -> ``calls``, ...). Module
phrases apply first, so they can override any of that.

**Why tokens, not an AST.** The twins must read like hand-written code:
comments, blank lines and the author's layout survive. ``ast.unparse`` drops
every comment (psycopg needs the third-party ``ast_comments`` and black to get
them back), while ``await``, ``async`` and names are single tokens whose
removal or renaming never changes how the rest parses (``await``'s operand is
a primary). So the edits are made on the token stream of the source, and the
``ast`` is used only for what tokens cannot see: the extent of a marked
statement or an ``IS_ASYNC`` branch. Then ruff removes the imports the sync
side no longer needs, sorts the rest and turns a re-yielding loop into
``yield from`` (``ruff check --fix --select F401,I001,UP028``), and formats
(``ruff format``), both with the project's own configuration, so a twin
passes lint exactly as written. The output is a pure
function of the source (and of ruff's version), so ``--check`` compares text.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import io
import keyword
import re
import subprocess
import sys
import tokenize
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent
SEARCH_DIRS = ("src", "tests")
MARKER = "__unasync__"
COLOUR = "IS_ASYNC"
HEADER = (
    "# This file is generated from {source} by scripts/unasync.py.\n"
    "# DO NOT EDIT; edit the async file and run: python scripts/unasync.py\n"
)
HEADER_PREFIX = "# This file is generated from "

#: Renames every module gets; a module's own ``__unasync__`` entries win.
DEFAULT_RENAMES: dict[str, str] = {
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "aiter": "iter",
    "anext": "next",
    "aclose": "close",
    "aclosing": "closing",
    "asleep": "sleep",
    "StopAsyncIteration": "StopIteration",
    "asynccontextmanager": "contextmanager",
    "AbstractAsyncContextManager": "AbstractContextManager",
    "enter_async_context": "enter_context",
    "asyncio.sleep": "time.sleep",
    "asyncio.Lock": "threading.Lock",
    "asyncio.Event": "threading.Event",
    "asyncio.Condition": "threading.Condition",
    "asyncio.Semaphore": "threading.Semaphore",
    "asyncio.BoundedSemaphore": "threading.BoundedSemaphore",
    "asyncio.Queue": "queue.Queue",
    "asyncio.TimeoutError": "TimeoutError",
    # The project's own dependencies: SQLAlchemy's async names live in one module,
    # their sync peers in two; redis-py mirrors its tree under redis.asyncio.
    "sqlalchemy.ext.asyncio.AsyncEngine": "sqlalchemy.Engine",
    "sqlalchemy.ext.asyncio.AsyncConnection": "sqlalchemy.Connection",
    "sqlalchemy.ext.asyncio.AsyncSession": "sqlalchemy.orm.Session",
    "sqlalchemy.ext.asyncio.async_sessionmaker": "sqlalchemy.orm.sessionmaker",
    "sqlalchemy.ext.asyncio.async_scoped_session": "sqlalchemy.orm.scoped_session",
    "async_sessionmaker": "sessionmaker",
    "async_scoped_session": "scoped_session",
    "redis.asyncio": "redis",
}

#: Prose forms of "await" outside code spans in docstrings and comments.
PROSE: dict[str, str] = {
    "await": "call",
    "Await": "Call",
    "awaits": "calls",
    "Awaits": "Calls",
    "awaited": "called",
    "Awaited": "Called",
    "awaiting": "calling",
    "Awaiting": "Calling",
}

_ASYNC_PREFIX = re.compile(r"^(_*)Async([A-Z]\w*)$")
_ASYNC_PREFIX_TEXT = r"(?<![\w])(_*)Async([A-Z]\w*)"
_DIRECTIVE = re.compile(r"#\s*unasync:\s*(?P<what>[\w-]+)")
_CODE_SPAN = re.compile(r"``.+?``|^\s*(?:>>>|\.\.\.) .*$", re.M | re.S)
_CODE_AWAIT = re.compile(r"\bawait\s+|\basync\s+(?=(?:def|with|for)\b)")
_AN_ASYNC = re.compile(r"\b([Aa])n ``(?=async )")
_PROSE_AWAIT = re.compile(r"\b(?:" + "|".join(PROSE) + r")\b")
_ATOMS = frozenset({"None", "True", "False"})
_SKIP_TOKENS = {
    tokenize.NEWLINE,
    tokenize.NL,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENDMARKER,
}


class UnasyncError(Exception):
    """The async source cannot be turned into a sync twin as written."""


# --- the renames ------------------------------------------------------------


@dataclass
class Renames:
    """The merged table of one module, split by kind of key."""

    names: dict[str, str] = field(default_factory=dict)
    dotted: dict[tuple[str, ...], str] = field(default_factory=dict)
    phrases: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, module_table: dict[str, str]) -> Renames:
        table = {**DEFAULT_RENAMES, **module_table}
        renames = cls()
        for key, value in table.items():
            if key.isidentifier():
                renames.names[key] = value
            elif all(part.isidentifier() for part in key.split(".")):
                renames.dotted[tuple(key.split("."))] = value
            else:
                renames.phrases[key] = value
        return renames

    def name(self, identifier: str) -> str:
        """The sync spelling of one identifier in code."""
        if identifier in self.names:
            return self.names[identifier]
        match = _ASYNC_PREFIX.match(identifier)
        return match.group(1) + match.group(2) if match else identifier

    def text(self, text: str, *, code: bool = False) -> str:
        """Convert a string's or a comment's text: prose, code spans, names.

        With ``code`` (an f-string's replacement field before Python 3.12,
        where the tokenizer keeps an f-string whole) all of it is code.
        """
        for phrase in sorted(self.phrases, key=len, reverse=True):
            text = text.replace(phrase, self.phrases[phrase])
        text = _code_text(text) if code else _convert_spans(_AN_ASYNC.sub(r"\1 ``", text))
        words = {**self.names, "_async": "_sync"}
        words.update({".".join(key): value for key, value in self.dotted.items()})
        keys = sorted(words, key=len, reverse=True)
        pattern = r"(?<![\w])(?:" + "|".join(map(re.escape, keys)) + r")(?![\w])"
        text = re.sub(pattern, lambda m: words[m.group(0)], text)
        return re.sub(_ASYNC_PREFIX_TEXT, lambda m: self._text_async_name(m), text)

    def string(self, literal: str) -> str:
        """A whole string token: an f-string's fields are code, the rest is text."""
        prefix = literal[: len(literal) - len(literal.lstrip("rRbBuUfF"))]
        if "f" not in prefix.lower():
            return self.text(literal)
        parts: list[str] = []
        for is_field, chunk in _fstring_chunks(literal):
            parts.append(self.text(chunk, code=is_field))
        return "".join(parts)

    def _text_async_name(self, match: re.Match[str]) -> str:
        word = match.group(0)
        return self.names.get(word, match.group(1) + match.group(2))


def _fstring_chunks(literal: str) -> Iterator[tuple[bool, str]]:
    """Split an f-string literal into (is a replacement field, text) chunks."""
    start = i = 0
    while i < len(literal):
        char = literal[i]
        if char in "{}" and literal[i : i + 2] in ("{{", "}}"):
            i += 2
        elif char == "{":
            yield False, literal[start:i]
            depth, quote, j = 0, "", i
            while j < len(literal):
                c = literal[j]
                if quote:
                    quote = "" if c == quote else quote
                elif c in "'\"":
                    quote = c
                elif c in "{[(":
                    depth += 1
                elif c in "}])":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            yield True, literal[i : j + 1]
            start = i = j + 1
        else:
            i += 1
    yield False, literal[start:]


def _convert_spans(text: str) -> str:
    """Code spans and doctest lines lose ``await``/``async``; prose gets ``call``."""
    parts: list[str] = []
    last = 0
    for match in _CODE_SPAN.finditer(text):
        parts.append(_prose_text(text[last : match.start()]))
        parts.append(_code_text(match.group(0)))
        last = match.end()
    parts.append(_prose_text(text[last:]))
    return "".join(parts)


def _code_text(text: str) -> str:
    return _CODE_AWAIT.sub("", text)


def _prose_text(text: str) -> str:
    return _PROSE_AWAIT.sub(lambda m: PROSE[m.group(0)], text)


def read_table(tree: ast.Module, path: str) -> dict[str, str]:
    """The module's ``__unasync__`` literal, checked."""
    for node in tree.body:
        target, value = _marker_assignment(node)
        if target:
            try:
                table: object = ast.literal_eval(value) if value is not None else None
            except ValueError:
                table = None
            if isinstance(table, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in table.items()
            ):
                return {str(k): str(v) for k, v in table.items()}
            raise UnasyncError(f"{path}:{node.lineno}: {MARKER} must be a literal dict of str")
    raise UnasyncError(f"{path}: no module-level {MARKER} = {{...}}")


def _marker_assignment(node: ast.stmt) -> tuple[bool, ast.expr | None]:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == MARKER for t in node.targets
    ):
        return True, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id == MARKER, node.value
    return False, None


# --- pass 1: colour-specific statements and expressions (ast, line-based) ----


def _is_colour(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == COLOUR


def _is_not_colour(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not) and _is_colour(node.operand)
    )


def _first_line(node: ast.stmt) -> int:
    decorators: list[ast.expr] = getattr(node, "decorator_list", [])
    return min([node.lineno, *(d.lineno for d in decorators)])


def _directives(source: str, path: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            match = _DIRECTIVE.match(tok.string)
            if match:
                if match.group("what") != "async-only":
                    raise UnasyncError(
                        f"{path}:{tok.start[0]}: unknown directive {tok.string!r} "
                        "(only '# unasync: async-only'; use `if IS_ASYNC:` blocks for the rest)"
                    )
                found[tok.start[0]] = match.group("what")
    return found


def _parents(tree: ast.AST) -> dict[int, list[ast.stmt]]:
    """id(statement) -> the statement list that holds it."""
    owner: dict[int, list[ast.stmt]] = {}
    for node in ast.walk(tree):
        for _name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                for stmt in value:
                    owner[id(stmt)] = value
    return owner


def _dedent(lines: list[str], amount: int) -> list[str]:
    out = []
    for line in lines:
        strip = min(amount, len(line) - len(line.lstrip(" ")))
        out.append(line[strip:] if line.strip() else line.lstrip(" "))
    return out


def _header_end(lines: list[str], first_body_line: int) -> int:
    """The 1-based line that ends the clause header above ``first_body_line``."""
    line = first_body_line - 1
    while line > 0 and (not lines[line - 1].strip() or lines[line - 1].lstrip().startswith("#")):
        line -= 1
    return line


def _statement_edit(
    node: ast.stmt, lines: list[str], empties_block: bool, path: str
) -> tuple[int, int, list[str]]:
    """(first line, last line, replacement lines) for one colour statement."""
    start, end = _first_line(node), node.end_lineno or node.lineno
    keep: list[str] = []
    if isinstance(node, ast.If) and (_is_colour(node.test) or _is_not_colour(node.test)):
        branch = node.orelse if _is_colour(node.test) else node.body
        if node.orelse and lines[node.orelse[0].lineno - 1].lstrip().startswith("elif"):
            raise UnasyncError(f"{path}:{node.lineno}: no elif after `if {COLOUR}`")
        for clause in (node.body, node.orelse):
            if clause and lines[clause[0].lineno - 1][: clause[0].col_offset].strip():
                raise UnasyncError(
                    f"{path}:{node.lineno}: put the branches of `if {COLOUR}` on their own lines"
                )
        if branch:
            first = _header_end(lines, branch[0].lineno) + 1
            last = branch[-1].end_lineno or branch[-1].lineno
            keep = _dedent(lines[first - 1 : last], branch[0].col_offset - node.col_offset)
    if not keep and empties_block:
        keep = [" " * node.col_offset + "pass\n"]
    if not keep and start > 1 and not lines[start - 2].strip():
        while end < len(lines) and not lines[end].strip():
            end += 1  # no double gap where the statement was
    return start, end, keep


def _parameter_lines(tree: ast.Module) -> set[int]:
    """Lines that hold exactly one parameter of a ``def``, with its default, and nothing else.

    Such a line may carry ``# unasync: async-only`` (a keyword only one colour
    takes, like an asyncio-only ``timeout``): the twin drops the line.
    """
    starts: dict[int, int] = {}
    whole: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        args = node.args
        positional = [*args.posonlyargs, *args.args]
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults))
        pairs = [
            *zip(positional, [*defaults, *args.defaults], strict=True),
            *zip(args.kwonlyargs, args.kw_defaults, strict=True),
            *((arg, None) for arg in (args.vararg, args.kwarg) if arg is not None),
        ]
        for arg, default in pairs:
            starts[arg.lineno] = starts.get(arg.lineno, 0) + 1
            end = (default or arg).end_lineno
            if end == arg.lineno == arg.end_lineno:
                whole.add(arg.lineno)
    return {line for line in whole if starts[line] == 1}


def _colour_pass(source: str, path: str) -> str | None:
    """One round of statement- and expression-level colour edits; None when done."""
    tree = ast.parse(source, filename=path)
    lines = source.splitlines(keepends=True)
    directives = _directives(source, path)
    owner = _parents(tree)
    starts: dict[int, ast.stmt] = {}
    candidates: list[ast.stmt] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.stmt):
            continue
        line = _first_line(node)
        starts.setdefault(line, node)
        if (
            line in directives
            or (isinstance(node, ast.If) and (_is_colour(node.test) or _is_not_colour(node.test)))
            or (node in tree.body and _marker_assignment(node)[0])
        ):
            candidates.append(node)
    parameters = _parameter_lines(tree)
    for line in directives:
        if line not in starts and line not in parameters:
            raise UnasyncError(
                f"{path}:{line}: '# unasync: async-only' must end a statement's first line "
                "or a line that holds exactly one parameter"
            )
    chosen: list[ast.stmt] = []
    for node in sorted(candidates, key=_first_line):
        if chosen and _first_line(node) <= (chosen[-1].end_lineno or 0):
            continue  # nested inside an outer edit: the next round sees it
        chosen.append(node)
    edited = {id(node) for node in chosen}
    edits = []
    for node in chosen:
        block = owner[id(node)]
        # The last statement of a block that loses all of them leaves a ``pass``.
        empties = node is block[-1] and all(id(stmt) in edited for stmt in block)
        edits.append(_statement_edit(node, lines, empties, path))
    for line in sorted(set(directives) - set(starts)):
        if not any(start <= line <= end for start, end, _ in edits):
            edits.append((line, line, []))  # an async-only parameter: drop its line
    edits.sort(key=lambda edit: edit[0])
    if edits:
        for start, end, keep in reversed(edits):
            lines[start - 1 : end] = keep
        return "".join(lines)
    return _expression_pass(source, tree)


def _expression_pass(source: str, tree: ast.Module) -> str | None:
    spans: list[tuple[ast.expr, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.expr):
            continue
        if isinstance(node, ast.IfExp) and _is_colour(node.test):
            spans.append((node, _segment(source, node.orelse)))
        elif isinstance(node, ast.IfExp) and _is_not_colour(node.test):
            spans.append((node, _segment(source, node.body)))
        elif _is_not_colour(node):
            spans.append((node, "True"))
    if not spans:
        return None
    offsets = _line_offsets(source)
    spans.sort(key=lambda s: (s[0].lineno, s[0].col_offset))
    chosen: list[tuple[int, int, str]] = []
    for node, text in spans:
        start = _offset(source, offsets, node.lineno, node.col_offset)
        end = _offset(source, offsets, node.end_lineno or node.lineno, node.end_col_offset or 0)
        if chosen and start < chosen[-1][1]:
            continue
        chosen.append((start, end, text))
    for start, end, text in reversed(chosen):
        source = source[:start] + text + source[end:]
    return source


def _segment(source: str, node: ast.expr) -> str:
    text = ast.get_source_segment(source, node)
    assert text is not None
    return text


def _qualified_imports(source: str, renames: Renames) -> str:
    """``from m import A, B`` where a key names ``m.A`` whole: one import per target module.

    ``from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession`` becomes
    ``from sqlalchemy import Engine`` and ``from sqlalchemy.orm import Session``
    (ruff sorts and merges them later). Names without such a key keep the
    statement's module and are left to the token pass.
    """
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, list[str]]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        targets: dict[str, list[str]] = {}
        for alias in node.names:
            full = tuple(f"{node.module}.{alias.name}".split("."))
            module, name = node.module, alias.name
            if full in renames.dotted:
                module, _, name = renames.dotted[full].rpartition(".")
            if not module:
                raise UnasyncError(f"line {node.lineno}: {'.'.join(full)} needs a module.Name")
            targets.setdefault(module, []).append(
                name + (f" as {alias.asname}" if alias.asname else "")
            )
        if list(targets) != [node.module]:
            indent = " " * node.col_offset
            new = [f"{indent}from {m} import {', '.join(names)}\n" for m, names in targets.items()]
            edits.append((node.lineno, node.end_lineno or node.lineno, new))
    for start, end, new in sorted(edits, reverse=True):
        lines[start - 1 : end] = new
    return "".join(lines)


def _line_offsets(source: str) -> list[int]:
    offsets = [0]
    for line in source.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    return offsets


def _offset(source: str, offsets: list[int], lineno: int, byte_col: int) -> int:
    """Character offset of an ast position (whose column counts UTF-8 bytes)."""
    line = source[offsets[lineno - 1] : offsets[lineno]]
    return offsets[lineno - 1] + len(line.encode()[:byte_col].decode())


# --- pass 2: the token stream ------------------------------------------------


@dataclass(frozen=True)
class _Tok:
    type: int
    text: str
    start: int
    end: int


class _TokenRewriter:
    """Rewrite the significant tokens of a source; gaps are copied verbatim."""

    def __init__(self, source: str, renames: Renames) -> None:
        self.source = source
        self.renames = renames
        self.added_modules: set[str] = set()
        offsets = _line_offsets(source)
        self.toks: list[_Tok] = []
        self.in_import: set[int] = set()
        line_start, importing = True, False
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NEWLINE:
                line_start, importing = True, False
            if tok.type in _SKIP_TOKENS:
                continue
            start = offsets[tok.start[0] - 1] + tok.start[1]
            end = offsets[tok.end[0] - 1] + tok.end[1]
            if line_start and tok.type == tokenize.NAME and tok.string in ("import", "from"):
                importing = True
            if tok.type != tokenize.COMMENT:
                line_start = False
            if importing:
                self.in_import.add(len(self.toks))
            self.toks.append(_Tok(tok.type, source[start:end], start, end))
        self.match = self._brackets()

    def _brackets(self) -> dict[int, int]:
        stack: list[int] = []
        match: dict[int, int] = {}
        for i, tok in enumerate(self.toks):
            if tok.type == tokenize.OP and tok.text in "([{":
                stack.append(i)
            elif tok.type == tokenize.OP and tok.text in ")]}" and stack:
                match[stack.pop()] = i
        return match

    def rewrite(self) -> str:
        if not self.toks:
            return self.source
        body = self._emit(0, len(self.toks))
        return self.source[: self.toks[0].start] + body + self.source[self.toks[-1].end :]

    def _emit(self, lo: int, hi: int) -> str:
        out: list[str] = []
        k = lo
        prev_end = self.toks[lo].start if lo < hi else 0
        drop_space = False
        while k < hi:
            tok = self.toks[k]
            gap = self.source[prev_end : tok.start]
            if not (drop_space and "\n" not in gap):
                out.append(gap)
            text, after, drop_space = self._rewrite_at(k, hi)
            out.append(text)
            prev_end = self.toks[after - 1].end
            k = after
        return "".join(out)

    def _is(self, k: int, kind: int, text: str | None = None) -> bool:
        if not 0 <= k < len(self.toks):
            return False
        tok = self.toks[k]
        return tok.type == kind and (text is None or tok.text == text)

    def _adjacent(self, k: int) -> bool:
        return self.toks[k].end == self.toks[k + 1].start

    def _rewrite_at(self, k: int, hi: int) -> tuple[str, int, bool]:
        """(replacement text, index after the consumed tokens, drop the next gap)."""
        tok = self.toks[k]
        if tok.type == tokenize.STRING:
            return self.renames.string(tok.text), k + 1, False
        if tok.type == tokenize.COMMENT or tokenize.tok_name[tok.type] == "FSTRING_MIDDLE":
            return self.renames.text(tok.text), k + 1, False
        if tok.type == tokenize.OP and tok.text == "(":
            grouped = self._grouped_await(k)
            if grouped is not None:
                return grouped
        if tok.type != tokenize.NAME:
            return tok.text, k + 1, False
        if tok.text in ("async", "await"):
            return "", k + 1, True
        attribute = self._is(k - 1, tokenize.OP, ".")
        if not attribute and k + 1 < hi and self._is(k + 1, tokenize.OP, "[") and self._adjacent(k):
            special = self._subscript(k)
            if special is not None:
                return special
        if not attribute:
            dotted = self._dotted(k, hi)
            if dotted is not None:
                return dotted
        if k in self.in_import and tok.text == "_async":
            return "_sync", k + 1, False
        if tok.text == COLOUR and k not in self.in_import:
            return "False", k + 1, False
        return self.renames.name(tok.text), k + 1, False

    def _grouped_await(self, k: int) -> tuple[str, int, bool] | None:
        """``(await x.y)`` -> ``x.y`` when the parentheses only group."""
        close = self.match.get(k)
        if close is None or not self._is(k + 1, tokenize.NAME, "await"):
            return None
        before = self.toks[k - 1] if k > 0 else None
        if before is not None and (
            before.type in (tokenize.STRING, tokenize.NUMBER)
            or (before.type == tokenize.NAME and not keyword.iskeyword(before.text))
            or before.text in (")", "]", "}")
        ):
            return None  # a call's parentheses, not a group
        if not self._is_primary(k + 2, close):
            return None
        return self._emit(k + 2, close), close + 1, False

    def _is_primary(self, lo: int, hi: int) -> bool:
        """Tokens ``lo:hi`` are one atom followed by trailers (``.name``, calls, subscripts)."""
        k = lo
        if k >= hi:
            return False
        if self.toks[k].type in (tokenize.NAME, tokenize.NUMBER) and not self._is_keyword_op(k):
            k += 1
        elif self.toks[k].type == tokenize.STRING:
            while k < hi and self.toks[k].type == tokenize.STRING:
                k += 1
        elif k in self.match:
            k = self.match[k] + 1
        else:
            return False
        while k < hi:
            if self._is(k, tokenize.OP, ".") and self._is(k + 1, tokenize.NAME):
                k += 2
            elif self.toks[k].text in ("(", "[") and k in self.match:
                k = self.match[k] + 1
            else:
                return False
        return True

    def _is_keyword_op(self, k: int) -> bool:
        return keyword.iskeyword(self.toks[k].text) and self.toks[k].text not in _ATOMS

    def _subscript(self, k: int) -> tuple[str, int, bool] | None:
        name = self.toks[k].text
        if name not in ("Awaitable", "Coroutine", "AsyncGenerator"):
            return None
        close = self.match[k + 1]
        args = self._split_args(k + 2, close)
        if name == "Awaitable" and len(args) == 1:
            return self._emit(*args[0]).strip(), close + 1, False
        if name == "Coroutine" and len(args) == 3:
            return self._emit(*args[2]).strip(), close + 1, False
        if name == "AsyncGenerator" and len(args) == 2:
            inner = ", ".join(self._emit(*arg).strip() for arg in args)
            return f"{self.renames.name('AsyncGenerator')}[{inner}, None]", close + 1, False
        return None

    def _split_args(self, lo: int, hi: int) -> list[tuple[int, int]]:
        args: list[tuple[int, int]] = []
        start = k = lo
        while k < hi:
            if k in self.match:
                k = self.match[k] + 1
                continue
            if self._is(k, tokenize.OP, ","):
                args.append((start, k))
                start = k + 1
            k += 1
        if start < hi:
            args.append((start, hi))
        return args

    def _dotted(self, k: int, hi: int) -> tuple[str, int, bool] | None:
        for parts in sorted(self.renames.dotted, key=len, reverse=True):
            last = k + 2 * len(parts) - 1
            if last > hi:
                continue
            if all(
                self._is(k + 2 * i, tokenize.NAME, part)
                and (i == 0 or self._is(k + 2 * i - 1, tokenize.OP, "."))
                for i, part in enumerate(parts)
            ) and all(self._adjacent(j) for j in range(k, last - 1)):
                replacement = self.renames.dotted[parts]
                if "." in replacement and k not in self.in_import:
                    self.added_modules.add(replacement.split(".")[0])
                return replacement, last, False
        return None


# --- putting it together -------------------------------------------------------


def _add_imports(source: str, modules: set[str]) -> str:
    """``import x`` for each module a dotted rename now needs, before the first import."""
    tree = ast.parse(source)
    imported = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    missing = sorted(modules - imported)
    if not missing:
        return source
    anchor = next(
        (
            node
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
        ),
        None,
    )
    lines = source.splitlines(keepends=True)
    at = anchor.lineno - 1 if anchor is not None else len(lines)
    lines[at:at] = [f"import {module}\n" for module in missing]
    return "".join(lines)


def _drop_empty_type_checking(source: str) -> str:
    """Remove ``if TYPE_CHECKING: pass`` left behind once its imports went."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    for node in reversed(tree.body):
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
            and not node.orelse
            and all(isinstance(stmt, ast.Pass) for stmt in node.body)
        ):
            del lines[node.lineno - 1 : node.end_lineno]
    return "".join(lines)


def _ruff_command() -> list[str]:
    """The ruff binary itself (no Python start-up per call), else ``python -m ruff``."""
    try:
        ruff_main = importlib.import_module("ruff.__main__")
    except ImportError:  # not installed as a package: let ``python -m ruff`` explain
        return [sys.executable, "-m", "ruff"]
    return [str(ruff_main.find_ruff_bin())]


def _ruff(args: Sequence[str], source: str, target: str, root: Path) -> str:
    result = subprocess.run(
        [*_ruff_command(), *args, "--stdin-filename", target, "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=root,
        check=False,
    )
    if result.returncode != 0:
        raise UnasyncError(f"{target}: ruff {args[0]} failed:\n{result.stderr}")
    return result.stdout


def unasync_source(source: str, *, source_name: str = "<async>") -> str:
    """The sync twin of ``source`` before ruff: colour blocks resolved, tokens renamed."""
    tree = ast.parse(source, filename=source_name)
    renames = Renames.build(read_table(tree, source_name))
    try:
        while (edited := _colour_pass(source, source_name)) is not None:
            source = edited
    except SyntaxError as exc:
        raise UnasyncError(f"{source_name}: a colour edit broke the code: {exc}") from exc
    try:
        source = _qualified_imports(source, renames)
    except UnasyncError as exc:
        raise UnasyncError(f"{source_name}: {exc}") from exc
    rewriter = _TokenRewriter(source, renames)
    source = rewriter.rewrite()
    try:
        source = _add_imports(source, rewriter.added_modules)
    except SyntaxError as exc:
        raise UnasyncError(f"{source_name}: the generated code does not parse: {exc}") from exc
    return source


def generate(source: str, *, source_name: str, target_name: str, root: Path = ROOT) -> str:
    """The complete, ruff-clean sync twin of ``source``, header included."""
    text = HEADER.format(source=source_name) + unasync_source(source, source_name=source_name)
    # F401/I001: imports only the async side used; UP028: ``async for x in it:
    # yield x`` reads ``yield from it`` in sync (its one "unsafe" fix: it also
    # forwards send/throw, which a transliterated loop never receives).
    fix = [
        "check",
        "--fix",
        "--unsafe-fixes",
        "--exit-zero",
        "--quiet",
        "--select",
        "F401,I001,UP028",
    ]
    text = _ruff(fix, text, target_name, root)
    cleaned = _drop_empty_type_checking(text)
    if cleaned != text:
        text = _ruff(fix, cleaned, target_name, root)
    return _ruff(["format", "--quiet"], text, target_name, root)


def asyncio_lines(generated: str) -> list[int]:
    """Lines of a twin whose code (not text) still names ``asyncio``: almost surely a bug."""
    return sorted(
        {
            tok.start[0]
            for tok in tokenize.generate_tokens(io.StringIO(generated).readline)
            if tok.type == tokenize.NAME and tok.string == "asyncio"
        }
    )


def sync_path(path: Path) -> Path:
    """``x/_async.py`` -> ``x/_sync.py``: the last ``async`` in the name becomes ``sync``."""
    name = path.name
    at = name.rfind("async")
    if at < 0:
        raise UnasyncError(f"{path}: a {MARKER} source needs 'async' in its file name")
    return path.with_name(name[:at] + "sync" + name[at + len("async") :])


_MARKER_LINE = re.compile(rf"^{MARKER}\s*[:=]", re.M)


def is_source(path: Path) -> bool:
    """Whether ``path``'s module body assigns ``__unasync__`` (not just mentions it)."""
    text = path.read_text(encoding="utf-8")
    if not _MARKER_LINE.search(text):
        return False
    tree = ast.parse(text, filename=str(path))
    return any(_marker_assignment(node)[0] for node in tree.body)


def discover(root: Path) -> list[tuple[Path, Path]]:
    """Every (async source, sync twin) under ``root``'s src/ and tests/."""
    return [
        (path, sync_path(path))
        for folder in SEARCH_DIRS
        for path in sorted((root / folder).rglob("*.py"))
        if is_source(path)
    ]


def generated_files(root: Path) -> Iterator[Path]:
    """Files that carry the header, whether or not a source still produces them."""
    for folder in SEARCH_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            with path.open(encoding="utf-8") as handle:
                if handle.readline().startswith(HEADER_PREFIX):
                    yield path


def run(root: Path, *, check: bool, only: Sequence[Path] = (), out: TextIO | None = None) -> int:
    """Regenerate (or with ``check`` compare) every pair; the process exit status."""
    write = (out or sys.stdout).write
    pairs = discover(root)
    if only:
        wanted = {path.resolve() for path in only}
        pairs = [pair for pair in pairs if pair[0].resolve() in wanted]
        if len(pairs) != len(wanted):
            write(f"unasync: not a {MARKER} source: {sorted(map(str, only))}\n")
            return 2
    stale = 0
    for source_path, target_path in pairs:
        source_name = source_path.relative_to(root).as_posix()
        target_name = target_path.relative_to(root).as_posix()
        try:
            expected = generate(
                source_path.read_text(encoding="utf-8"),
                source_name=source_name,
                target_name=target_name,
                root=root,
            )
        except UnasyncError as exc:
            write(f"unasync: {exc}\n")
            return 2
        leftover = asyncio_lines(expected)
        if leftover:
            sys.stderr.write(
                f"unasync: warning: {target_name} still uses asyncio on line(s) "
                f"{', '.join(map(str, leftover))}; mark that code `if IS_ASYNC:` or async-only\n"
            )
        current = target_path.read_text(encoding="utf-8") if target_path.exists() else ""
        if current == expected:
            continue
        if check:
            stale += 1
            write(f"unasync: {target_name} differs from what {source_name} generates:\n")
            write(
                "".join(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        expected.splitlines(keepends=True),
                        fromfile=f"{target_name} (on disk)",
                        tofile=f"{target_name} (generated)",
                    )
                )
            )
        else:
            target_path.write_text(expected, encoding="utf-8")
            write(f"unasync: wrote {target_name}\n")
    if check and not only:
        produced = {target.resolve() for _, target in pairs}
        for path in generated_files(root):
            if path.resolve() not in produced:
                stale += 1
                write(
                    f"unasync: {path.relative_to(root).as_posix()} has the generated header "
                    f"but no source with {MARKER} produces it\n"
                )
    if check and stale:
        write(f"unasync: {stale} generated file(s) out of date; run: python scripts/unasync.py\n")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="diff and exit 1 if stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: here)")
    parser.add_argument("paths", nargs="*", type=Path, help="only these async sources")
    options = parser.parse_args(argv)
    return run(options.root.resolve(), check=options.check, only=options.paths)


if __name__ == "__main__":
    sys.exit(main())
