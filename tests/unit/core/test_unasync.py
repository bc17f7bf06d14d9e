"""scripts/unasync.py: the sync twin generated from an async source.

Golden cases (async in, sync out, before ruff) for every construct the
generator knows; then the whole pipeline through ruff on a realistic module,
the ``--check`` gate on a temporary repository, and a pilot on a copy of a
real shell. The real modules are not touched.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import shutil
import subprocess
import sys
import textwrap
import tokenize
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "unasync.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scalekit_unasync_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


unasync = _load_script()
needs_ruff = pytest.mark.skipif(
    importlib.util.find_spec("ruff") is None, reason="ruff is not installed (the dev extra)"
)


def convert(body: str, table: str = "{}") -> str:
    """``body`` as an async source with ``table``, through the generator's token stage."""
    source = f"__unasync__ = {table}\n" + textwrap.dedent(body)
    return str(unasync.unasync_source(source, source_name="case_async.py"))


def check(body: str, expected: str, table: str = "{}") -> None:
    assert convert(body, table) == textwrap.dedent(expected)


# --- golden cases: one construct each ---------------------------------------------


def test_async_def_and_await_drop_their_keyword() -> None:
    check(
        """\
        async def load(key: str) -> bytes:
            value = await fetch(key)
            return await decode(value)
        """,
        """\
        def load(key: str) -> bytes:
            value = fetch(key)
            return decode(value)
        """,
    )


def test_async_with_async_for_and_async_comprehensions() -> None:
    check(
        """\
        async def rows(pool):
            async with pool.connect() as conn, lock:
                async for row in conn.stream():
                    yield row
            return [row async for row in conn.stream()]
        """,
        """\
        def rows(pool):
            with pool.connect() as conn, lock:
                for row in conn.stream():
                    yield row
            return [row for row in conn.stream()]
        """,
    )


def test_grouping_parentheses_around_await_go_but_call_parentheses_stay() -> None:
    check(
        """\
        async def f():
            size = (await conn.execute(q)).rowcount + len(await read())
            total = -(await count()) * 2
            both = (await a(), await b())
            return not (await ready()) and (await x).y[0]
        """,
        """\
        def f():
            size = conn.execute(q).rowcount + len(read())
            total = -count() * 2
            both = (a(), b())
            return not ready() and x.y[0]
        """,
    )


def test_async_prefixed_classes_lose_the_prefix_unless_the_table_keeps_them() -> None:
    check(
        """\
        class AsyncCache(_AsyncBase):
            engine: AsyncEngine
            mock: AsyncMock
            lowercase_async_name = asyncish = Asynchronous = None
        """,
        """\
        class Cache(_Base):
            engine: Engine
            mock: AsyncMock
            lowercase_async_name = asyncish = Asynchronous = None
        """,
        table='{"AsyncMock": "AsyncMock"}',
    )


def test_module_table_renames_names_dotted_prefixes_and_phrases() -> None:
    check(
        '''\
        from redis.asyncio import Redis
        import redis.asyncio


        async def run(self, client: redis.asyncio.Redis) -> None:
            """The asyncio shell: run on a redis.asyncio.Redis."""
            await self.call_async(client)
            self.call_asyncish()
        ''',
        '''\
        from redis import Redis
        import redis


        def run(self, client: redis.Redis) -> None:
            """The sync shell: run on a redis.Redis."""
            self.call(client)
            self.call_asyncish()
        ''',
        table=(
            '{"call_async": "call", "redis.asyncio": "redis",'
            ' "The asyncio shell": "The sync shell"}'
        ),
    )


def test_a_qualified_key_splits_a_from_import_by_target_module() -> None:
    check(
        """\
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from sqlalchemy.ext.asyncio import (
                AsyncEngine,
                AsyncSession as Session_,
                async_sessionmaker,
                create_async_engine,
            )
        from redis.asyncio.cluster import RedisCluster
        from pkg.aio import Client


        def f(engine: AsyncEngine) -> async_sessionmaker[Session_]:
            return async_sessionmaker(engine)
        """,
        """\
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from sqlalchemy import Engine
            from sqlalchemy.orm import Session as Session_, sessionmaker
            from sqlalchemy.ext.asyncio import create_async_engine
        from redis.cluster import RedisCluster
        from pkg.sync import Client


        def f(engine: Engine) -> sessionmaker[Session_]:
            return sessionmaker(engine)
        """,
        table='{"pkg.aio.Client": "pkg.sync.Client"}',
    )


def test_asyncio_primitives_become_their_threading_and_time_peers() -> None:
    check(
        """\
        import asyncio


        class Holder:
            def __init__(self) -> None:
                self.lock = asyncio.Lock()
                self.done = asyncio.Event()

            async def wait(self, clock) -> None:
                await asyncio.sleep(0.1)
                await clock.asleep(0.1)
                async with self.lock:
                    await self.done.wait()
        """,
        """\
        import threading
        import time
        import asyncio


        class Holder:
            def __init__(self) -> None:
                self.lock = threading.Lock()
                self.done = threading.Event()

            def wait(self, clock) -> None:
                time.sleep(0.1)
                clock.sleep(0.1)
                with self.lock:
                    self.done.wait()
        """,
    )


def test_an_import_a_dotted_rename_needs_is_not_added_twice() -> None:
    check(
        """\
        import time


        async def nap() -> None:
            await asyncio.sleep(time.monotonic())
        """,
        """\
        import time


        def nap() -> None:
            time.sleep(time.monotonic())
        """,
    )


def test_async_protocol_names_map_to_the_sync_protocol() -> None:
    check(
        """\
        class Stream:
            def __aiter__(self) -> Stream:
                return self

            async def __anext__(self) -> int:
                raise StopAsyncIteration

            async def __aenter__(self) -> Stream:
                return self

            async def __aexit__(self, *exc: object) -> None:
                await self.aclose()


        async def first(items):
            async with aclosing(aiter(items)) as it:
                return await anext(it)
        """,
        """\
        class Stream:
            def __iter__(self) -> Stream:
                return self

            def __next__(self) -> int:
                raise StopIteration

            def __enter__(self) -> Stream:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()


        def first(items):
            with closing(iter(items)) as it:
                return next(it)
        """,
    )


def test_async_types_become_sync_types() -> None:
    check(
        """\
        from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable
        from contextlib import asynccontextmanager


        @asynccontextmanager
        async def opened() -> AsyncIterator[Conn]:
            yield conn


        def f(
            a: AsyncIterable[int],
            b: Callable[[], Awaitable[dict[str, int]]],
            c: Callable[P, Coroutine[Any, Any, list[T]]],
        ) -> AsyncGenerator[int, None]: ...
        """,
        """\
        from collections.abc import Generator, Iterable, Iterator, Awaitable
        from contextlib import contextmanager


        @contextmanager
        def opened() -> Iterator[Conn]:
            yield conn


        def f(
            a: Iterable[int],
            b: Callable[[], dict[str, int]],
            c: Callable[P, list[T]],
        ) -> Generator[int, None, None]: ...
        """,
    )


def test_imports_of_async_modules_point_at_their_sync_twins() -> None:
    check(
        """\
        from scalekit.cache._async import AsyncCache
        from ._async import helper
        from . import _async


        class Driver:
            _async = True

            def f(self) -> None:
                self._async = _async
        """,
        """\
        from scalekit.cache._sync import Cache
        from ._sync import helper
        from . import _sync


        class Driver:
            _async = True

            def f(self) -> None:
                self._async = _async
        """,
    )


def test_is_async_blocks_keep_the_sync_branch_dedented() -> None:
    check(
        """\
        from scalekit._unasync import IS_ASYNC


        async def f(loader):
            if IS_ASYNC:
                result = loader()
                if inspect.isawaitable(result):
                    result = await result
            else:
                # The sync loader returns its value.
                result = loader()
                if result is None:
                    result = 0
            if not IS_ASYNC:
                check_thread()
            if IS_ASYNC:
                await asyncio.sleep(0)
            return result
        """,
        """\
        from scalekit._unasync import IS_ASYNC


        def f(loader):
            # The sync loader returns its value.
            result = loader()
            if result is None:
                result = 0
            check_thread()
            return result
        """,
    )


def test_nested_is_async_blocks_resolve_from_the_outside_in() -> None:
    check(
        """\
        def f():
            if not IS_ASYNC:
                a()
                if IS_ASYNC:
                    b()
                else:
                    c()
        """,
        """\
        def f():
            a()
            c()
        """,
    )


def test_is_async_in_expressions_becomes_the_sync_value() -> None:
    check(
        """\
        run(is_async=IS_ASYNC, mode="a" if IS_ASYNC else "s", sync=not IS_ASYNC)
        other = ("s" if not IS_ASYNC else "a")
        """,
        """\
        run(is_async=False, mode="s", sync=True)
        other = ("s")
        """,
    )


def test_async_only_directive_drops_the_whole_statement() -> None:
    check(
        """\
        import asyncio  # unasync: async-only


        class Cache:
            def __init__(self) -> None:
                self.tasks: set[asyncio.Task[None]] = set(  # unasync: async-only
                    (),
                )
                self.name = "c"

            @property  # unasync: async-only
            def loop(self) -> asyncio.AbstractEventLoop:
                return asyncio.get_running_loop()

            async def close(self) -> None:
                await asyncio.gather(*self.tasks)  # unasync: async-only
        """,
        """\


        class Cache:
            def __init__(self) -> None:
                self.name = "c"

            def close(self) -> None:
                pass
        """,
    )


def test_async_only_directive_drops_a_parameter_line() -> None:
    check(
        """\
        class Limiter:
            def __init__(
                self,
                store: object,
                *,
                timeout: float | None = None,  # unasync: async-only
                name: str = "x",
            ) -> None:
                if IS_ASYNC:
                    self.timeout = timeout
                self.name = name
        """,
        """\
        class Limiter:
            def __init__(
                self,
                store: object,
                *,
                name: str = "x",
            ) -> None:
                self.name = name
        """,
    )


def test_an_emptied_block_gets_pass() -> None:
    check(
        """\
        def f():
            if IS_ASYNC:
                g()


        def h():
            g()  # unasync: async-only
            if IS_ASYNC:
                g()
        """,
        """\
        def f():
            pass


        def h():
            pass
        """,
    )


def test_docstrings_and_comments_convert_prose_and_code_spans() -> None:
    check(
        '''\
        async def get(self) -> None:
            """Await ``loader()`` through the :class:`AsyncCache`; awaits each one.

            Use an ``async with cache:`` block, or ``await cache.aclose()``.

            >>> async with AsyncCache() as cache:
            ...     await cache.get()
            """
            # Awaiting the holder: an await here yields to the loop.
            return "AsyncCache.aclose awaited"
        ''',
        '''\
        def get(self) -> None:
            """Call ``loader()`` through the :class:`Cache`; calls each one.

            Use a ``with cache:`` block, or ``cache.close()``.

            >>> with Cache() as cache:
            ...     cache.get()
            """
            # Calling the holder: an call here yields to the loop.
            return "Cache.close called"
        ''',
    )


def test_f_string_fields_are_code_and_their_text_is_prose() -> None:
    # Python < 3.12 keeps an f-string as one token; 3.12+ splits it: same output.
    check(
        """\
        async def f(x):
            return f"{{AsyncCache}} awaited {await g(x)!r:>{width}} {x.aclose} {'AsyncX'}"
        """,
        """\
        def f(x):
            return f"{{Cache}} called {g(x)!r:>{width}} {x.close} {'X'}"
        """,
    )


def test_the_table_itself_is_dropped() -> None:
    source = 'X = 1\n\n__unasync__: dict[str, str] = {\n    "a": "b",\n}\n\nY = 2\n'
    assert unasync.unasync_source(source) == "X = 1\n\nY = 2\n"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("X = 1\n", "no module-level __unasync__"),
        ("__unasync__ = dict(a='b')\n", "must be a literal dict"),
        ("__unasync__ = {}\nx = 1  # unasync: sync-only\n", "unknown directive"),
        ("__unasync__ = {}\nx = f(\n    1,  # unasync: async-only\n)\n", "first line"),
        (
            "__unasync__ = {}\ndef f(\n    a, b,  # unasync: async-only\n):\n    pass\n",
            "exactly one parameter",
        ),
        (
            "__unasync__ = {}\nif IS_ASYNC:\n    a()\nelif b:\n    c()\n",
            "no elif after `if IS_ASYNC`",
        ),
        ("__unasync__ = {}\nif IS_ASYNC: a()\nelse: b()\n", "on their own lines"),
        ("__unasync__ = {}\nif IS_ASYNC:\n    a()\nelse: b()\n", "on their own lines"),
    ],
)
def test_sources_the_generator_refuses(source: str, message: str) -> None:
    with pytest.raises(unasync.UnasyncError, match=message):
        unasync.unasync_source(source)


@pytest.mark.parametrize(
    ("name", "twin"),
    [
        ("src/pkg/_async.py", "src/pkg/_sync.py"),
        ("tests/test_cache_async.py", "tests/test_cache_sync.py"),
        ("tests/test_async_cache.py", "tests/test_sync_cache.py"),
    ],
)
def test_twin_names(name: str, twin: str) -> None:
    assert unasync.sync_path(Path(name)) == Path(twin)


def test_code_that_still_names_asyncio_is_found_and_text_is_not() -> None:
    generated = '"""asyncio.run(main())"""\n# asyncio\nx = 1\nasyncio.gather()\n'
    assert unasync.asyncio_lines(generated) == [4]


def test_a_source_without_async_in_its_name_has_no_twin_name() -> None:
    with pytest.raises(unasync.UnasyncError, match="'async' in its file name"):
        unasync.sync_path(Path("src/pkg/shell.py"))


# --- the whole pipeline, through ruff ------------------------------------------------

REALISTIC = '''\
"""The asyncio shell of a tiny cache: await ``loader()`` once per key.

Use it as ``async with AsyncTinyCache(client) as cache:``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from scalekit._unasync import IS_ASYNC

if TYPE_CHECKING:
    from collections.abc import Coroutine

__unasync__ = {
    "AsyncTinyCache": "TinyCache",
    "get_or_set": "get_or_set",
    "The asyncio shell": "The sync shell",
}

__all__ = ["AsyncTinyCache"]


class AsyncTinyCache:
    """A dict in front of ``client``; ``await cache.get_or_set(key, loader)``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.lock = asyncio.Lock()
        self.pending: set[asyncio.Task[None]] = set()  # unasync: async-only

    async def get_or_set(self, key: str, loader: Callable[[], Any | Awaitable[Any]]) -> Any:
        async with self.lock:
            value = await self.client.get(key)
        if value is None:
            value = loader()
            if IS_ASYNC:
                if inspect.isawaitable(value):
                    value = await value
            await self.client.set(key, value)
        return value

    async def keys(self) -> AsyncIterator[str]:
        async for key in self.client.scan_iter():
            yield key

    async def call(self, fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
        return (await fn()) + 1

    async def aclose(self) -> None:
        # Await every pending refresh before the client goes.
        if IS_ASYNC:
            await asyncio.gather(*self.pending)
        await asyncio.sleep(0)

    async def __aenter__(self) -> AsyncTinyCache:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
'''


def generate_realistic(root: Path = ROOT) -> str:
    return str(
        unasync.generate(
            REALISTIC,
            source_name="src/scalekit/tiny/_async.py",
            target_name="src/scalekit/tiny/_sync.py",
            root=root,
        )
    )


def code_names(source: str) -> set[str]:
    """The identifiers and keywords of ``source``'s code (not its strings or comments)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.string for tok in tokens if tok.type == tokenize.NAME}


def ruff(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
    )


@needs_ruff
def test_generated_module_is_clean_formatted_python(tmp_path: Path) -> None:
    generated = generate_realistic()
    assert generated.startswith(
        "# This file is generated from src/scalekit/tiny/_async.py by scripts/unasync.py.\n"
        "# DO NOT EDIT; edit the async file and run: python scripts/unasync.py\n"
        '"""The sync shell of a tiny cache: call ``loader()`` once per key.\n'
    )
    compile(generated, "_sync.py", "exec")
    gone = {"async", "await", "asyncio", "Awaitable", "Coroutine", "IS_ASYNC", "__unasync__"}
    assert not gone & code_names(generated)
    assert "if TYPE_CHECKING" not in generated  # its only import went, and so did the block
    assert "import threading\nimport time\nfrom collections.abc import Callable, Iterator\n" in (
        generated
    )
    target = tmp_path / "_sync.py"
    target.write_text(generated)
    config = str(ROOT / "pyproject.toml")
    lint = ruff("check", "--config", config, "--no-cache", str(target))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = ruff("format", "--check", "--config", config, "--no-cache", str(target))
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


@needs_ruff
def test_generation_is_idempotent() -> None:
    assert generate_realistic() == generate_realistic()


# --- the CLI and --check on a temporary repository ----------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one async source in src/ and one test twin in tests/."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "src" / "scalekit" / "tiny").mkdir(parents=True)
    (tmp_path / "src" / "scalekit" / "tiny" / "_async.py").write_text(REALISTIC)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_tiny_async.py").write_text(
        textwrap.dedent(
            """\
            from scalekit.tiny._async import AsyncTinyCache

            __unasync__ = {"AsyncTinyCache": "TinyCache"}


            async def test_get_or_set(cache: AsyncTinyCache) -> None:
                assert await cache.get_or_set("k", lambda: 1) == 1
            """
        )
    )
    return tmp_path


def run_cli(repo: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = unasync.run(repo, check="--check" in args, out=out)
    return int(status), out.getvalue()


@needs_ruff
def test_check_fails_on_a_hand_edit_and_passes_after_regeneration(repo: Path) -> None:
    twin = repo / "src" / "scalekit" / "tiny" / "_sync.py"
    test_twin = repo / "tests" / "test_tiny_sync.py"

    status, output = run_cli(repo, "--check")
    assert status == 1
    assert "src/scalekit/tiny/_sync.py differs" in output

    status, output = run_cli(repo)
    assert status == 0
    assert "wrote src/scalekit/tiny/_sync.py" in output
    assert "wrote tests/test_tiny_sync.py" in output
    assert "def test_get_or_set(cache: TinyCache) -> None:" in test_twin.read_text()
    assert "from scalekit.tiny._sync import TinyCache" in test_twin.read_text()
    assert run_cli(repo, "--check") == (0, "")

    twin.write_text(twin.read_text().replace("return value", "return value or 0"))
    status, output = run_cli(repo, "--check")
    assert status == 1
    assert "--- src/scalekit/tiny/_sync.py (on disk)" in output
    assert "+++ src/scalekit/tiny/_sync.py (generated)" in output
    assert "-        return value or 0\n+        return value\n" in output

    assert run_cli(repo)[0] == 0
    assert run_cli(repo, "--check") == (0, "")
    assert run_cli(repo) == (0, "")  # nothing left to write: regeneration is idempotent


@needs_ruff
def test_check_reports_a_generated_file_whose_source_is_gone(repo: Path) -> None:
    assert run_cli(repo)[0] == 0
    (repo / "tests" / "test_tiny_async.py").unlink()
    status, output = run_cli(repo, "--check")
    assert status == 1
    assert "tests/test_tiny_sync.py has the generated header but no source" in output


@needs_ruff
def test_command_line_check_exits_1_with_a_diff(repo: Path) -> None:
    command = [sys.executable, str(SCRIPT), "--root", str(repo)]
    assert subprocess.run(command, capture_output=True, check=False).returncode == 0
    twin = repo / "tests" / "test_tiny_sync.py"
    twin.write_text(twin.read_text() + "# a hand edit\n")
    result = subprocess.run([*command, "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "-# a hand edit" in result.stdout
    only = [*command, str(repo / "src" / "scalekit" / "tiny" / "_async.py"), "--check"]
    assert subprocess.run(only, capture_output=True, check=False).returncode == 0


@needs_ruff
def test_the_generated_files_in_this_repository_are_up_to_date() -> None:
    status, output = run_cli(ROOT, "--check")
    assert status == 0, output


# --- a pilot on a copy of a real shell -------------------------------------------------

BREAKER_TABLE = """\
__unasync__ = {
    "call_async": "call",
    "wrap_async": "wrap",
    "_acquire_async": "_acquire_sync",
    "_finish_async": "_finish_sync",
    "The asyncio driver: await a coroutine function": "The sync driver: call a function",
}

"""


@needs_ruff
def test_pilot_a_copy_of_the_breaker_shell_generates_an_importable_sync_driver(
    tmp_path: Path,
) -> None:
    source = (ROOT / "src" / "scalekit" / "breaker" / "_async.py").read_text()
    source = source.replace("__all__", BREAKER_TABLE + "__all__", 1)
    source = source.replace(
        "if inspect.isawaitable(fallback_result):",
        "if inspect.isawaitable(fallback_result):  # unasync: async-only",
    )
    generated = unasync.generate(
        source,
        source_name="src/scalekit/breaker/_async.py",
        target_name="src/scalekit/breaker/_pilot_sync.py",
    )
    compile(generated, "_pilot_sync.py", "exec")
    assert not {"async", "await", "Coroutine", "call_async"} & code_names(generated)
    target = tmp_path / "pilot_breaker_sync.py"
    target.write_text(generated)
    lint = ruff("check", "--config", str(ROOT / "pyproject.toml"), "--no-cache", str(target))
    assert lint.returncode == 0, lint.stdout

    spec = importlib.util.spec_from_file_location("pilot_breaker_sync", target)
    assert spec is not None and spec.loader is not None
    pilot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pilot)
    coroutines = [
        name for name in pilot.__all__ if inspect.iscoroutinefunction(getattr(pilot, name))
    ]
    assert not coroutines, "the generated driver still has coroutine functions"

    from scalekit.breaker import CircuitBreaker

    if hasattr(pilot, "wrap"):
        breaker = CircuitBreaker("pilot")
        guarded = pilot.wrap(breaker, lambda x: x * 2)
        assert guarded(21) == 42
