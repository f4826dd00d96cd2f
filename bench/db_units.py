"""Where the writer's time goes: the CSMS in-process, under the ocpp_load.py load.

    .venv/bin/python bench/db_units.py [--chargers 200] [--seconds 10] [--database sqlite|postgres]

Runs ``Csms(settings)`` in this process (pinned to core 0) and the load generator of
``bench/ocpp_load.py`` in another process (core 1), and reports over the measured window:

* SQL statements per OCPP message, by kind: the ORM's (SQLAlchemy's ``before_cursor_execute``
  on the writer's engine) and the writer's direct statements (``csms.db.Statement``, counted by
  wrapping the direct executors; an ``executemany`` counts once);
* group-commit batches and units per batch (``Database.batches`` / ``Database.units``);
* the wall time of each kind of unit of work on the writer (the writer runs units one after
  another, so this is its critical path), by the unit's function, and the rest of the writer's
  time (opening the batch, the final flush of deferred writes, the commit).

It only wraps ``Database.write`` / ``Database.write_batch`` and the direct executors and listens
to engine events: nothing in csms/ is changed. A diagnostic for the persistence path, not the
benchmark (that is ``bench/ocpp_load.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import logging
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


async def run(args: argparse.Namespace) -> None:
    from sqlalchemy import event

    from csms.app import Csms
    from csms.models import IdTag
    from csms.settings import load_settings

    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    workdir = Path(tempfile.mkdtemp(prefix="csms-units-"))
    cluster = None
    if args.database == "postgres":
        from tests.pg import start_postgres

        os.sched_setaffinity(0, {1})  # PostgreSQL inherits core 1, the load generator's
        cluster = start_postgres(workdir)
        os.sched_setaffinity(0, {0})
        url = cluster.create_database("units")
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'units.db'}"
    settings = load_settings({}, database_url=url, ocpp_host="127.0.0.1", ocpp_port=0,
                             admin_token="db-units-" + os.urandom(8).hex(),
                             api_host="127.0.0.1", api_port=0, auto_register=True,
                             log_level="WARNING")
    app = Csms(settings)
    await app.start()
    if args.no_hooks:  # diagnostic: what the OCPP path costs without the paid-session layer
        app.service.hooks = None
    hook_s: dict[str, float] = collections.defaultdict(float)
    hook_n: collections.Counter[str] = collections.Counter()
    hooks = app.service.hooks
    if hooks is not None:  # time the in-unit hooks (they run inside the units timed below)
        for name in ("on_start", "on_status", "on_stop"):
            original_hook = getattr(hooks, name)

            def timed_hook(original_hook: Any = original_hook, name: str = name) -> Any:
                async def hook(*a: Any, **kw: Any) -> Any:
                    t0 = time.perf_counter()
                    try:
                        return await original_hook(*a, **kw)
                    finally:
                        if measuring:
                            hook_s[name] += time.perf_counter() - t0
                            hook_n[name] += 1
                return hook

            setattr(hooks, name, timed_hook())

    measuring = False
    stmts: collections.Counter[str] = collections.Counter()

    @event.listens_for(app.db.write_engine.sync_engine, "before_cursor_execute")
    def _count(_conn: Any, _cur: Any, statement: str, _p: Any, _ctx: Any, many: bool) -> None:
        if measuring:
            stmts["orm " + statement.split(None, 1)[0].upper()
                  + (" (executemany)" if many else "")] += 1

    import csms.db as csms_db

    def _kind(sql: str, many: bool) -> str:
        words = sql.replace('"', "").split()
        verb = words[0].upper()
        table = (words[2] if verb == "INSERT" else words[1] if verb == "UPDATE"
                 else words[words.index("FROM") + 1] if "FROM" in words else "?")
        return f"direct {verb} {table}" + (" (executemany)" if many else "")

    for cls_name in ("_SqliteDirect", "_AsyncpgDirect", "_SessionDirect"):
        cls = getattr(csms_db, cls_name, None)
        if cls is None:
            continue
        for meth in ("execute", "executemany", "fetchone", "fetchall"):
            original = getattr(cls, meth)

            def wrap(original: Any = original, many: bool = meth == "executemany") -> Any:
                async def counted(self: Any, sql: str, args: Any) -> Any:
                    if measuring:
                        stmts[_kind(sql, many)] += 1
                    return await original(self, sql, args)
                return counted

            setattr(cls, meth, wrap())

    unit_s: dict[str, float] = collections.defaultdict(float)
    unit_n: collections.Counter[str] = collections.Counter()
    profiler = cProfile.Profile() if args.cprofile else None

    def timing(original: Any) -> Any:
        async def timed_write(unit: Any) -> Any:
            name = getattr(unit, "__qualname__", repr(unit)).replace(".<locals>.unit", "")

            async def timed(arg: Any) -> Any:
                profiling = measuring and profiler is not None and name in args.cprofile
                if profiling:
                    profiler.enable()
                t0 = time.perf_counter()
                try:
                    return await unit(arg)
                finally:
                    if profiling:
                        profiler.disable()
                    if measuring:
                        unit_s[name] += time.perf_counter() - t0
                        unit_n[name] += 1

            return await original(timed)
        return timed_write

    app.db.write = timing(app.db.write)  # type: ignore[method-assign]
    app.db.write_batch = timing(app.db.write_batch)  # type: ignore[method-assign]
    original_commit = app.db._commit_batch

    async def timed_commit(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await original_commit(*a, **kw)
        finally:
            if measuring:
                unit_s["(whole batches)"] += time.perf_counter() - t0

    app.db._commit_batch = timed_commit  # type: ignore[method-assign]

    async def tags(session: Any) -> None:
        for i in range(args.chargers):
            session.add(IdTag(id_tag=f"TAG{i:05d}"))

    await app.db.write(tags)
    cmd = [sys.executable, str(REPO / "bench" / "ocpp_load.py"), "--role", "loadgen",
           "--url", f"ws://127.0.0.1:{app.ocpp_port}/ocpp", "--server-pid", str(os.getpid()),
           "--chargers", str(args.chargers), "--seconds", str(args.seconds), "--warmup", "3",
           "--meter-values", str(args.meter_values), "--client-core", "1"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    result: dict[str, Any] = {}
    marks: dict[str, float] = {}
    while line := (await proc.stdout.readline()).decode():
        if line.startswith("WINDOW_START"):
            measuring = True
            marks.update(t0=time.perf_counter(), c0=time.process_time(), b0=app.db.batches,
                         u0=app.db.units)
        elif line.startswith("WINDOW_END"):
            measuring = False
            marks.update(t1=time.perf_counter(), c1=time.process_time(), b1=app.db.batches,
                         u1=app.db.units)
        elif line.startswith("RESULT "):
            result = json.loads(line[7:])
    await proc.wait()
    await app.stop()
    if cluster is not None:
        cluster.stop()
    shutil.rmtree(workdir, ignore_errors=True)

    wall = marks["t1"] - marks["t0"]
    msgs = result["messages"]
    batches, units = marks["b1"] - marks["b0"], marks["u1"] - marks["u0"]
    print(f"{args.database}, {args.chargers} chargers: {result['msgs_per_s']:.0f} msg/s, "
          f"p50 {result['latency_ms']['p50']:.1f} ms, p99 {result['latency_ms']['p99']:.1f} ms; "
          f"process CPU {100 * (marks['c1'] - marks['c0']) / wall:.0f}% = "
          f"{1e6 * (marks['c1'] - marks['c0']) / max(msgs, 1):.0f} us per message")
    print(f"group commit: {batches} batches, {units} units, "
          f"{units / max(batches, 1):.1f} units per batch")
    total = sum(stmts.values())
    print(f"SQL statements per message: {total / max(msgs, 1):.2f} ("
          + ", ".join(f"{k} {v / max(msgs, 1):.2f}" for k, v in stmts.most_common()) + ")")
    whole = unit_s.pop("(whole batches)", 0.0)
    in_units = sum(unit_s.values())
    print(f"{'unit of work':<48} {'count':>7} {'avg us':>8} {'share of window':>16}")
    for name, secs in sorted(unit_s.items(), key=lambda kv: -kv[1]):
        print(f"{name:<48} {unit_n[name]:>7} {1e6 * secs / unit_n[name]:>8.0f} "
              f"{100 * secs / wall:>15.1f}%")
    for name, secs in sorted(hook_s.items(), key=lambda kv: -kv[1]):
        print(f"{'  of which SessionHooks.' + name + ' (csms.sessions)':<48} {hook_n[name]:>7} "
              f"{1e6 * secs / hook_n[name]:>8.0f} {100 * secs / wall:>15.1f}%")
    print(f"{'(writer outside units: open, flush, commit)':<48} {batches:>7} "
          f"{1e6 * (whole - in_units) / max(batches, 1):>8.0f} "
          f"{100 * (whole - in_units) / wall:>15.1f}%")
    print(f"writer busy {100 * whole / wall:.0f}% of the window (includes the loop's other "
          "work while a batch waits: closing the session yields)")
    if profiler is not None:
        print(f"\ncProfile of the units {', '.join(args.cprofile)} (cumulative):")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--meter-values", type=int, default=4)
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--no-hooks", action="store_true",
                        help="diagnostic: detach the paid-session hooks (csms.sessions) from "
                             "the service, to see what they cost")
    parser.add_argument("--cprofile", nargs="*", default=[], metavar="UNIT",
                        help="cProfile these units, e.g. ChargingService.start_transaction")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
