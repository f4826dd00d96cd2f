"""Database access: the async engine, migrations and the group-committing writer.

Every state change goes through :meth:`Database.write`: the caller hands over a unit of work (an
async function of an ``AsyncSession``) and awaits it; one writer task runs all units that are
waiting in a single database transaction and commits once, then wakes every caller. The answer
to a charger is therefore sent only after its change is durable, yet a busy server pays one commit
for many messages (group commit). Units must touch only the database (no network I/O): they run
one after another on the writer.

If any unit of a batch raises, the batch is rolled back and each unit is re-run alone, so one bad
message cannot lose another's write.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import DateTime, Table, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.util import find_tables
from sqlalchemy.util import await_
from sqlmodel import SQLModel

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R", bound=SQLModel)
Unit = Callable[[AsyncSession], Awaitable[Any]]

MAX_BATCH = 512


def _sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite+aiosqlite:///path`` URL; None for memory or URI databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.query:
        return None
    if not parsed.database or parsed.database == ":memory:":
        return None
    return parsed.database


def make_engine(url: str, echo: bool = False, inline: bool = False) -> AsyncEngine:
    """Create the async engine for ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URLs.

    SQLite runs in WAL mode with ``synchronous=NORMAL`` and explicit ``BEGIN`` so that
    transactions behave as on PostgreSQL. The SQLite file's folder is created if missing.

    ``inline`` (SQLite files): connections run their statements on the calling thread instead
    of aiosqlite's worker thread (:class:`InlineSqliteConnection`); ``False`` gives stock
    aiosqlite connections.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        path = _sqlite_path(url) if inline else None
        if path is not None:

            async def creator() -> InlineSqliteConnection:
                return InlineSqliteConnection(
                    sqlite3.connect(path, timeout=30, isolation_level=None,
                                    check_same_thread=False)
                )

            engine = create_async_engine(url, echo=echo, async_creator=creator)
        else:
            engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            if path is None:
                dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    return create_async_engine(url, echo=echo, pool_size=10, max_overflow=10, pool_pre_ping=True)


_OFF_LOOP: ContextVar[bool] = ContextVar("csms_sqlite_off_loop", default=False)

OFF_LOOP_PACKAGES = ("billing",)
"""Packages whose database work must never block the event loop (billing: its tests enforce
it), so on SQLite their units of work and reads run on a worker thread."""


def _is_off_loop(fn: Any) -> bool:
    module = getattr(fn, "__module__", None) or ""
    return any(module == p or module.startswith(p + ".") for p in OFF_LOOP_PACKAGES)


class _InlineSqliteCursor:
    """aiosqlite's ``Cursor`` API over a ``sqlite3.Cursor`` (:class:`InlineSqliteConnection`)."""

    __slots__ = ("_cursor", "_run")

    def __init__(self, cursor: sqlite3.Cursor, run: Callable[..., Awaitable[Any]]) -> None:
        self._cursor = cursor
        self._run = run

    async def __aenter__(self) -> _InlineSqliteCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    def __aiter__(self) -> _InlineSqliteCursor:
        return self

    async def __anext__(self) -> Any:
        row = await self._run(self._cursor.fetchone)
        if row is None:
            raise StopAsyncIteration
        return row

    async def execute(self, sql: str, parameters: Any = ()) -> _InlineSqliteCursor:
        await self._run(self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> _InlineSqliteCursor:
        await self._run(self._cursor.executemany, sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return await self._run(self._cursor.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return await self._run(  # type: ignore[no-any-return]
            self._cursor.fetchmany, self._cursor.arraysize if size is None else size
        )

    async def fetchall(self) -> list[Any]:
        return await self._run(self._cursor.fetchall)  # type: ignore[no-any-return]

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _InlineQueue:
    """Stands in for aiosqlite's job queue (SQLAlchemy's adapter puts its isolation-level
    setter there): runs the job at once and resolves its future."""

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        fut, fn = item
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiter
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            return
        if fut is not None and not fut.done():
            fut.set_result(result)


class InlineSqliteConnection:
    """aiosqlite's ``Connection`` API over a ``sqlite3.Connection``, run on the calling thread.

    aiosqlite hands every cursor call (execute, fetch, close...) to a worker thread and back:
    ~30 us per call plus a wake-up of the event loop, ~13 calls per ORM unit of work. With one
    server process on one core that buys nothing: SQLite work is CPU work here (WAL with
    ``synchronous=NORMAL``: a commit writes the WAL without fsync; readers never wait for the
    writer), and SQLAlchemy's result processing ran on the loop's thread anyway. So the
    statements run inline; the loop is busy while they run, as it would be for the same CPU
    work on the other thread. Given to SQLAlchemy's aiosqlite dialect through
    ``async_creator`` (SQLAlchemy's adapter needs ``cursor()``, ``commit()``, ``rollback()``,
    ``close()``, ``create_function()``, ``isolation_level`` and its ``_tx`` / ``_conn``).
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._connection: sqlite3.Connection | None = conn
        self._tx = _InlineQueue()
        self._worker: ThreadPoolExecutor | None = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise ValueError("no active connection")
        return self._connection

    @property
    def raw(self) -> sqlite3.Connection:
        """The ``sqlite3`` connection (for the writer's direct statements)."""
        return self._conn

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on this thread, or on the connection's own worker thread inside
        :func:`off_loop` (code that must never block the event loop)."""
        if not _OFF_LOOP.get():
            return fn(*args)
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="csms-sqlite")
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    def cursor(self) -> _InlineSqliteCursor:
        return _InlineSqliteCursor(self._conn.cursor(), self.run)

    async def execute(self, sql: str, parameters: Any = ()) -> _InlineSqliteCursor:
        cursor = self.cursor()
        await cursor.execute(sql, parameters)
        return cursor

    async def commit(self) -> None:
        await self.run(self._conn.commit)

    async def rollback(self) -> None:
        await self.run(self._conn.rollback)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=False)
            self._worker = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._conn.isolation_level = value  # type: ignore[assignment]

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction


def _last_value_memo(proc: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``proc`` remembering its last argument (by identity) and result."""
    last: list[Any] = [_MISSING, None]

    def process(value: Any) -> Any:
        if value is last[0]:
            return last[1]
        out = proc(value)
        last[0], last[1] = value, out
        return out

    return process


_MISSING = object()


class _Compiled:
    """A statement compiled for one dialect: SQL text, positional binds, value processors."""

    __slots__ = ("sql", "binds", "results")

    def __init__(
        self, stmt: Any, dialect: Dialect, processors: Mapping[str, Callable[[Any], Any]]
    ) -> None:
        compiled = stmt.compile(dialect=dialect)
        prefetch = [*getattr(compiled, "insert_prefetch", ()),
                    *getattr(compiled, "update_prefetch", ())]
        if prefetch:
            raise ValueError(
                "direct statements take every value explicitly; give "
                + ", ".join(c.key for c in prefetch)
            )
        if compiled.positiontup is None:
            raise ValueError(f"dialect {dialect.name} has no positional paramstyle")
        self.sql: str = compiled.string
        binds: list[tuple[str, Callable[[Any], Any] | None, bool, Any]] = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            proc = processors.get(name) or bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None and isinstance(getattr(bind.type, "impl", bind.type), DateTime):
                proc = _last_value_memo(proc)  # rows of one message share their times
            binds.append((name, proc, bool(bind.required), bind.effective_value))
        self.binds = tuple(binds)
        self.results: tuple[Callable[[Any], Any] | None, ...] = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None)
            for c in stmt.exported_columns
        )

    def args(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """Positional DB-API arguments from ``params`` (by bind name)."""
        return tuple([
            (params[name] if required else params.get(name, default)) if proc is None
            else proc(params[name] if required else params.get(name, default))
            for name, proc, required, default in self.binds
        ])

    def row(self, raw: Any) -> tuple[Any, ...]:
        """A result row with each column's result processor applied."""
        return tuple(v if p is None else p(v) for v, p in zip(raw, self.results, strict=False))


class Statement:
    """A Core statement run straight on the DB-API connection of the writer's transaction.

    SQLAlchemy's per-execution path (coercions, cache key, compiled-cache lookup, execution
    context, result object) costs 70-200 us per statement; the hot OCPP messages need a few
    statements each. A ``Statement`` is compiled once per dialect and then only binds values
    (with the column types' own bind / result processors, so rows are stored exactly as the ORM
    stores them). ``stmt`` is a Core statement or a function of the dialect name returning one
    (for dialect-specific constructs such as ``ON CONFLICT``). Every bound value must be given
    explicitly (no Python-side column defaults). ``processors`` replaces the bind processor of
    some binds (e.g. a faster JSON serialiser).
    """

    __slots__ = ("_make", "table", "tables", "name", "_processors", "_compiled")

    def __init__(
        self,
        stmt: Any,
        name: str,
        processors: Mapping[str, Callable[[Any], Any]] | None = None,
    ) -> None:
        self._make: Callable[[str], Any] = stmt if callable(stmt) else (lambda _d: stmt)
        sample = self._make("sqlite")
        table = getattr(sample, "table", None)
        self.table: str | None = None if table is None else str(table.name)
        """The table a deferred write (INSERT / UPDATE) goes to."""
        self.tables: frozenset[str] = statement_tables(sample) or frozenset()
        """Every table the statement reads or writes."""
        self.name = name
        self._processors: Mapping[str, Callable[[Any], Any]] = processors or {}
        self._compiled: dict[str, _Compiled] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        c = self._compiled.get(dialect.name)
        if c is None:
            c = self._compiled[dialect.name] = _Compiled(
                self._make(dialect.name), dialect, self._processors
            )
        return c

    def __repr__(self) -> str:
        return f"Statement({self.name})"


def statement_tables(stmt: Any) -> frozenset[str] | None:
    """Names of the tables a Core/ORM statement reads or writes; None if it names none."""
    found = frozenset(
        str(t.name)
        for t in find_tables(stmt, include_joins=True, include_selects=True, include_crud=True)
        if isinstance(t, Table)
    )
    return found or None


def _rowcount(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> int:
    return conn.execute(sql, args).rowcount


def _first(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    return conn.execute(sql, args).fetchone()


def _all(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, args).fetchall()


class _SqliteDirect:
    """Direct statements on the writer's ``sqlite3`` connection (inline, as its cursors)."""

    __slots__ = ("conn", "run")

    def __init__(self, driver: InlineSqliteConnection) -> None:
        self.conn = driver.raw
        self.run = driver.run

    async def execute(self, sql: str, args: tuple[Any, ...]) -> int:
        return await self.run(_rowcount, self.conn, sql, args)  # type: ignore[no-any-return]

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self.run(self.conn.executemany, sql, rows)

    async def fetchone(self, sql: str, args: tuple[Any, ...]) -> Any:
        return await self.run(_first, self.conn, sql, args)

    async def fetchall(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return await self.run(_all, self.conn, sql, args)  # type: ignore[no-any-return]


_ROWCOUNT = re.compile(r"(?:UPDATE|DELETE|INSERT \d+|SELECT) (\d+)")


class _AsyncpgDirect:
    """Direct statements on the writer's asyncpg connection (inside SQLAlchemy's transaction)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def execute(self, sql: str, args: tuple[Any, ...]) -> int:
        status = await self.conn.execute(sql, *args)
        m = _ROWCOUNT.match(status or "")
        return int(m.group(1)) if m else -1

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self.conn.executemany(sql, rows)

    async def fetchone(self, sql: str, args: tuple[Any, ...]) -> Any:
        return await self.conn.fetchrow(sql, *args)

    async def fetchall(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return list(await self.conn.fetch(sql, *args))


class _SessionDirect:
    """Fallback for other drivers: the statements through ``exec_driver_sql``."""

    __slots__ = ("conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def execute(self, sql: str, args: tuple[Any, ...]) -> int:
        return (await self.conn.exec_driver_sql(sql, args)).rowcount

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self.conn.exec_driver_sql(sql, rows)  # type: ignore[arg-type]

    async def fetchone(self, sql: str, args: tuple[Any, ...]) -> Any:
        return (await self.conn.exec_driver_sql(sql, args)).first()

    async def fetchall(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        return list((await self.conn.exec_driver_sql(sql, args)).all())


class Batch:
    """One group commit as seen by a direct unit of work (:meth:`Database.write_batch`).

    Direct statements (:class:`Statement`) run on the DB-API connection of the batch's database
    transaction. :meth:`defer` queues a write until something could observe it, so that the
    deferred writes of many units go out as one ``executemany`` per statement: the writes
    pending on a table are run (in the order they were deferred) before any statement that
    reads or writes that table - a direct statement, or SQL of the session (an engine event
    looks at the tables of each SELECT; any other SQL of the session runs after all of them) -
    and all of them before the commit. The tables are independent here (no triggers; the
    deferred writes never create a row another deferred write refers to), so writes to
    different tables may go out in another order than they were deferred. ORM work (hooks,
    other units) gets the session from :meth:`orm`; its pending changes are flushed before the
    next direct statement.

    Units may keep state in memory that mirrors what they wrote (caches); :meth:`on_rollback`
    registers what to forget if the batch does not commit.
    """

    __slots__ = ("session", "dialect", "_direct", "_deferred", "_tables", "_orm_used",
                 "_rollback", "statements", "lazy")

    def __init__(self, session: AsyncSession, dialect: Dialect, direct: Any, lazy: bool) -> None:
        self.session = session
        self.dialect = dialect
        self._direct = direct
        self._deferred: dict[Statement, list[tuple[Any, ...]]] = {}
        self._tables: dict[str | None, Statement] = {}
        self._orm_used = False
        self._rollback: list[Callable[[], None]] = []
        self.statements = 0
        self.lazy = lazy
        """True if the session's SQL flushes the deferred writes first (engine event)."""

    async def sync(self) -> None:
        """Write the session's pending ORM changes (if ORM work ran since the last time), so
        that direct statements come after them and :meth:`Database.watch` callbacks have seen
        them (caches must be consulted after this)."""
        if self._orm_used:
            self._orm_used = False
            sync = self.session.sync_session
            if sync.new or sync.deleted or sync.dirty:
                await self.session.flush()

    async def _ready(self, stmt: Statement) -> None:
        if self._orm_used:
            await self.sync()
        if self._deferred and not self._tables.keys().isdisjoint(stmt.tables):
            await self._flush_deferred(stmt.tables)

    async def flush(self) -> None:
        """Run the session's pending ORM changes and all deferred writes now."""
        if self._orm_used:
            await self.sync()
        if self._deferred:
            await self._flush_deferred()

    async def _flush_deferred(self, tables: Iterable[str | None] | None = None) -> None:
        """Run the deferred writes (only those to ``tables`` if given)."""
        if tables is None:
            todo, self._deferred = self._deferred, {}
            self._tables.clear()
        else:
            todo = {}
            for table in tables:
                if self._tables.pop(table, None) is not None:
                    for stmt in [st for st in self._deferred if st.table == table]:
                        todo[stmt] = self._deferred.pop(stmt)
        direct = self._direct
        for stmt, rows in todo.items():
            sql = stmt.compiled(self.dialect).sql
            self.statements += 1
            if len(rows) == 1:
                await direct.execute(sql, rows[0])
            else:
                await direct.executemany(sql, rows)

    async def defer(self, stmt: Statement, params: Mapping[str, Any]) -> None:
        """Queue a write (INSERT / UPDATE) for the next flush."""
        if self._orm_used:
            await self.sync()
        other = self._tables.get(stmt.table)
        if other is not None and other is not stmt:
            await self._flush_deferred((stmt.table,))  # another write on the table: in order
        self._tables[stmt.table] = stmt
        args = stmt.compiled(self.dialect).args(params)
        rows = self._deferred.get(stmt)
        if rows is None:
            self._deferred[stmt] = [args]
        else:
            rows.append(args)

    async def defer_many(self, stmt: Statement, params: Iterable[Mapping[str, Any]]) -> None:
        """:meth:`defer` for several rows."""
        if self._orm_used:
            await self.sync()
        other = self._tables.get(stmt.table)
        if other is not None and other is not stmt:
            await self._flush_deferred((stmt.table,))
        self._tables[stmt.table] = stmt
        compiled = stmt.compiled(self.dialect)
        self._deferred.setdefault(stmt, []).extend(compiled.args(p) for p in params)

    async def execute(self, stmt: Statement, params: Mapping[str, Any]) -> int:
        """Run a write now; returns the row count."""
        await self._ready(stmt)
        compiled = stmt.compiled(self.dialect)
        self.statements += 1
        return int(await self._direct.execute(compiled.sql, compiled.args(params)))

    async def fetchone(self, stmt: Statement, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a SELECT (or INSERT ... RETURNING), processed; None if none."""
        await self._ready(stmt)
        compiled = stmt.compiled(self.dialect)
        self.statements += 1
        raw = await self._direct.fetchone(compiled.sql, compiled.args(params))
        return None if raw is None else compiled.row(raw)

    async def fetchall(self, stmt: Statement, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """All rows of a SELECT, processed."""
        await self._ready(stmt)
        compiled = stmt.compiled(self.dialect)
        self.statements += 1
        return [compiled.row(r) for r in await self._direct.fetchall(compiled.sql,
                                                                      compiled.args(params))]

    async def orm(self) -> AsyncSession:
        """The batch's session for ORM work (the deferred writes go out before its SQL)."""
        if self._deferred and not self.lazy:
            await self._flush_deferred()
        self._orm_used = True
        return self.session

    def on_rollback(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` if this batch is rolled back (e.g. forget cached state)."""
        self._rollback.append(fn)

    def _rolled_back(self) -> None:
        fns, self._rollback = self._rollback, []
        for fn in fns:
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort, logged
                log.exception("rollback callback failed")


BatchUnit = Callable[[Batch], Awaitable[Any]]


class Database:
    """The engines, a session factory and the single group-committing writer task.

    Use ``async with Database(url) as db`` or call :meth:`start` / :meth:`close`.
    """

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, echo)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=True)
        self.write_engine = self.engine
        # A Session class of its own, so that the events below see this writer's sessions only.
        writer_session = type("WriterSession", (Session,), {})
        self._write_sessions = async_sessionmaker(
            self.write_engine, expire_on_commit=False, autoflush=True,
            sync_session_class=writer_session,
        )
        self._watchers: list[tuple[type[Any], str, Callable[[list[Any] | None], None]]] = []
        event.listen(writer_session, "after_flush", self._after_flush)
        event.listen(writer_session, "do_orm_execute", self._on_orm_execute)
        self._batch: Batch | None = None
        self._batch_conn: Any = None
        self._select_tables: dict[str, Any] = {}
        event.listen(self.write_engine.sync_engine, "before_cursor_execute", self._before_sql)
        self._queue: asyncio.Queue[tuple[Any, asyncio.Future[Any], bool]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0
        self.units = 0
        self.statements = 0
        """Direct statements run (for diagnostics; ORM statements are not counted)."""

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite database."""
        return self.engine.dialect.name == "sqlite"

    async def start(self) -> None:
        """Start the writer task (idempotent)."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._run_writer(), name="db-writer")

    async def close(self) -> None:
        """Finish queued writes, stop the writer and dispose of the engines."""
        if self._writer is not None:
            await self._queue.join()
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def add(self, row: R) -> R:
        """Insert ``row`` in the next group commit; returns it with its primary key set.

        Raises:
            the database error of the insert or the commit.
        """

        async def unit(s: AsyncSession) -> R:
            s.add(row)
            await s.flush()
            return row

        return await self.write(unit)

    async def write(self, unit: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``unit`` in the next group commit and return its result once committed.

        Raises:
            whatever ``unit`` raised (its own writes are then not committed), or the database
            error of the commit.
        """
        if self._writer is None:
            raise RuntimeError("Database.start() was not called")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((unit, fut, False))
        return await fut

    async def write_batch(self, unit: Callable[[Batch], Awaitable[T]]) -> T:
        """Like :meth:`write`, for a unit of work on the :class:`Batch` (direct statements,
        deferred writes shared with the other units of the group commit)."""
        if self._writer is None:
            raise RuntimeError("Database.start() was not called")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((unit, fut, True))
        return await fut

    async def read(self, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run a read-only function on its own session (not serialised with the writer)."""
        token = _OFF_LOOP.set(True) if _is_off_loop(fn) else None
        try:
            async with self.sessions() as session:
                return await fn(session)
        finally:
            if token is not None:
                _OFF_LOOP.reset(token)

    async def _run_writer(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self._commit_batch(batch)
            except Exception:  # noqa: BLE001 - fall back to one transaction per unit
                for item in batch:
                    await self._commit_batch([item], alone=True)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def watch(self, model: type[Any], callback: Callable[[list[Any] | None], None]) -> None:
        """Call ``callback(objects)`` whenever the writer's session writes ``model`` objects
        (inserted, updated or deleted by an ORM flush), and ``callback(None)`` for any other
        statement run through ``session.execute()`` that may write ``model``'s table (rows
        unknown). For code that keeps what it wrote in memory (direct statements are not
        reported: their author knows). Units must write through the session (ORM objects or
        ``session.execute``), not on its connection behind its back.
        """
        self._watchers.append((model, str(model.__table__.name), callback))

    def _after_flush(self, session: Session, _context: Any) -> None:
        if not self._watchers:
            return
        changed = [*session.new, *session.dirty, *session.deleted]
        for model, _table, callback in self._watchers:
            objects = [o for o in changed if isinstance(o, model)]
            if objects:
                callback(objects)

    def _on_orm_execute(self, state: Any) -> None:
        if self._watchers and not state.is_select:
            tables = statement_tables(state.statement)  # None: unknown (text): assume any
            for _model, table, callback in self._watchers:
                if tables is None or table in tables:
                    callback(None)

    def _before_sql(
        self, conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        """Engine event: SQL of the batch's session runs after the batch's deferred writes to
        the tables it reads (a SELECT), or after all of them (anything else)."""
        batch = self._batch
        if batch is None or not batch._deferred or conn is not self._batch_conn:
            return
        tables = self._select_tables.get(statement, _MISSING)
        if tables is _MISSING:
            tables = None
            compiled = getattr(context, "compiled", None)
            if (compiled is not None and getattr(compiled.statement, "is_select", False)
                    and not (context.isinsert or context.isupdate or context.isdelete)):
                tables = statement_tables(compiled.statement)
            if len(self._select_tables) > 10_000:
                self._select_tables.clear()
            self._select_tables[statement] = tables
        if tables is None:
            await_(batch._flush_deferred())
        elif not batch._tables.keys().isdisjoint(tables):
            await_(batch._flush_deferred(tables))

    async def _open_batch(self, session: AsyncSession) -> Batch:
        conn = await session.connection()
        dialect = conn.dialect
        driver = (await conn.get_raw_connection()).driver_connection
        direct: Any
        lazy = True
        if isinstance(driver, InlineSqliteConnection):
            direct = _SqliteDirect(driver)
        elif dialect.driver == "asyncpg":
            # SQLAlchemy's asyncpg adapter opens the database transaction with the first
            # statement it runs: make that happen before any direct statement.
            await conn.exec_driver_sql("SELECT 1")
            direct = _AsyncpgDirect(driver)
        else:
            direct = _SessionDirect(conn)
            lazy = False  # flushing from the event would re-enter this very connection
        batch = Batch(session, dialect, direct, lazy)
        if lazy:
            self._batch, self._batch_conn = batch, conn.sync_connection
        return batch

    async def _commit_batch(
        self, batch: list[tuple[Any, asyncio.Future[Any], bool]], alone: bool = False
    ) -> None:
        results: list[Any] = []
        live = [item for item in batch if not item[1].done()]
        if not live:
            return
        current: Batch | None = None
        try:
            async with self._write_sessions() as session, session.begin():
                current = await self._open_batch(session)
                for unit, _fut, direct in live:
                    if direct:
                        results.append(await unit(current))
                    elif _is_off_loop(unit):
                        token = _OFF_LOOP.set(True)
                        try:
                            results.append(await unit(await current.orm()))
                        finally:
                            _OFF_LOOP.reset(token)
                    else:
                        results.append(await unit(await current.orm()))
                await current.flush()
        except Exception as exc:
            self._batch = self._batch_conn = None
            if current is not None:
                current._rolled_back()
            if not alone:
                raise
            for _unit, fut, _direct in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except BaseException as exc:  # cancellation: wake the callers, then stop
            self._batch = self._batch_conn = None
            if current is not None:
                current._rolled_back()
            for _unit, fut, _direct in live:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"database writer stopped: {exc!r}"))
            raise
        self._batch = self._batch_conn = None
        self.batches += 1
        self.units += len(live)
        self.statements += current.statements
        for (_unit, fut, _direct), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)
