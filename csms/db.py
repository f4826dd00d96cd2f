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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Unit = Callable[[AsyncSession], Awaitable[Any]]

MAX_BATCH = 512


def make_engine(url: str, echo: bool = False) -> AsyncEngine:
    """Create the async engine for ``sqlite+aiosqlite://`` or ``postgresql+asyncpg://`` URLs.

    SQLite runs in WAL mode with ``synchronous=NORMAL`` and explicit ``BEGIN`` so that
    transactions behave as on PostgreSQL. The SQLite file's folder is created if missing.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
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


class Database:
    """The engine, a session factory and the single group-committing writer task.

    Use ``async with Database(url) as db`` or call :meth:`start` / :meth:`close`.
    """

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.engine = make_engine(url, echo)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, autoflush=True)
        self._queue: asyncio.Queue[tuple[Unit, asyncio.Future[Any]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0
        self.units = 0

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite database."""
        return self.engine.dialect.name == "sqlite"

    async def start(self) -> None:
        """Start the writer task (idempotent)."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._run_writer(), name="db-writer")

    async def close(self) -> None:
        """Finish queued writes, stop the writer and dispose of the engine."""
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

    async def write(self, unit: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run ``unit`` in the next group commit and return its result once committed.

        Raises:
            whatever ``unit`` raised (its own writes are then not committed), or the database
            error of the commit.
        """
        if self._writer is None:
            raise RuntimeError("Database.start() was not called")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((unit, fut))
        return await fut

    async def read(self, fn: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run a read-only function on its own session (not serialised with the writer)."""
        async with self.sessions() as session:
            return await fn(session)

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

    async def _commit_batch(
        self, batch: list[tuple[Unit, asyncio.Future[Any]]], alone: bool = False
    ) -> None:
        results: list[Any] = []
        live = [(u, f) for u, f in batch if not f.done()]
        if not live:
            return
        try:
            async with self.sessions() as session, session.begin():
                for unit, _fut in live:
                    results.append(await unit(session))
        except Exception as exc:
            if not alone:
                raise
            for _unit, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except BaseException as exc:  # cancellation: wake the callers, then stop
            for _unit, fut in live:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"database writer stopped: {exc!r}"))
            raise
        self.batches += 1
        self.units += len(live)
        for (_unit, fut), result in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(result)
