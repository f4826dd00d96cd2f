"""OCPP load benchmark of the CSMS: throughput, latency, persistence, memory per idle connection.

    .venv/bin/python bench/ocpp_load.py                       # ~1 minute, SQLite
    .venv/bin/python bench/ocpp_load.py --database postgres   # throwaway PostgreSQL (tests/pg.py)
    .venv/bin/python bench/ocpp_load.py --compare-stock       # + the stock `ocpp` library reference
    .venv/bin/python bench/ocpp_load.py --profile             # + py-spy profile of the server

What it does (see docs/performance.md):

1. starts ``csms serve`` as its own process pinned to ONE core (``taskset -c 0``) on a fresh
   database, ``CSMS_AUTO_REGISTER=true``, ``CSMS_LOG_LEVEL=WARNING``, loopback ports only;
2. runs the load generator in another process pinned to the other core: N chargers (plain
   ``websockets`` clients, orjson), each BootNotification + StatusNotification, then in a closed
   loop (one outstanding CALL per charger, the next sent as soon as the reply arrives)
   StartTransaction, StatusNotification(Charging), K x MeterValues (energy register, power,
   current, voltage), Heartbeat, StopTransaction (with transactionData);
   throughput and latency (send -> reply, the server answers after its commit) are taken over
   the measured window only (after the warm-up);
3. checks through the HTTP API and a direct count in the database that every acknowledged
   StartTransaction / StopTransaction / MeterValues was persisted;
4. measures the server's RSS (VmRSS) before and after opening M idle connections that each sent
   one BootNotification, on a fresh server;
5. optionally the same load against ``bench/stock_ocpp_server.py`` (stock ``ocpp`` library);
6. prints a table and a one-line verdict against the budget. Always exits 0: it measures.

The load generator reports its own CPU use and the server's (from /proc/PID/stat) over the
window: a server below ~90 % of its core while the client is at ~100 % means the client was the
bottleneck, and the script says so.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import resource
import secrets
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from orjson import dumps, loads

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# The budget (developers' guide).
BUDGET_MSGS = 5000.0
BUDGET_P99_MS = 50.0
BUDGET_KIB_PER_CONN = 25.0
STOCK_REFERENCE = 2000.0

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- /proc helpers ------------------------------------------------------------------------------

def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pin(core: int | None) -> None:
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


# ================================================================================================
# The load generator (runs in its own process: --role loadgen / idle)
# ================================================================================================

class Stats:
    """Per-action latencies of the replies received inside the window, plus totals."""

    def __init__(self) -> None:
        self.window_start = float("inf")
        self.window_end = float("inf")
        self.lat: dict[str, list[float]] = collections.defaultdict(list)
        self.total_ok: collections.Counter[str] = collections.Counter()
        self.call_errors: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()


class Charger:
    """One charge point: a websocket and a message counter; one outstanding CALL at a time."""

    __slots__ = ("ws", "seq", "stats")

    def __init__(self, ws: Any, stats: Stats) -> None:
        self.ws = ws
        self.seq = 0
        self.stats = stats

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Send a CALL, wait for its reply; None on CALLERROR."""
        self.seq += 1
        mid = str(self.seq)
        data = dumps([2, mid, action, payload])
        t0 = time.perf_counter()
        await self.ws.send(data, text=True)
        while True:
            msg = loads(await self.ws.recv(decode=False))
            if msg[1] == mid:
                break
            self.stats.errors["unexpected frame"] += 1
        t1 = time.perf_counter()
        st = self.stats
        if msg[0] == 3:
            st.total_ok[action] += 1
            if st.window_start <= t1 <= st.window_end:
                st.lat[action].append(t1 - t0)
            return msg[2]  # type: ignore[no-any-return]
        st.call_errors[f"{action}: {msg[2]}" if msg[0] == 4 else f"{action}: frame {msg[0]}"] += 1
        return None


_ts_cache: tuple[int, str] = (0, "")


def now_ts() -> str:
    """The current UTC time as OCPP wants it, recomputed once a second (cheap client)."""
    global _ts_cache
    sec = int(time.time())
    if _ts_cache[0] != sec:
        _ts_cache = (sec, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec)))
    return _ts_cache[1]


def boot_payload(i: int) -> dict[str, Any]:
    return {"chargePointVendor": "BenchVendor", "chargePointModel": "AC22",
            "chargePointSerialNumber": f"SN{i:06d}", "firmwareVersion": "1.0.0",
            "meterType": "MID", "meterSerialNumber": f"M{i:06d}"}


def sampled(energy: int, ts: str) -> list[dict[str, Any]]:
    return [{"timestamp": ts, "sampledValue": [
        {"value": str(energy), "context": "Sample.Periodic",
         "measurand": "Energy.Active.Import.Register", "location": "Outlet", "unit": "Wh"},
        {"value": "11040.0", "context": "Sample.Periodic", "measurand": "Power.Active.Import",
         "location": "Outlet", "unit": "W"},
        {"value": "16.02", "context": "Sample.Periodic", "measurand": "Current.Import",
         "location": "Outlet", "unit": "A", "phase": "L1"},
        {"value": "230.4", "context": "Sample.Periodic", "measurand": "Voltage",
         "location": "Outlet", "unit": "V", "phase": "L1-N"},
    ]}]


async def open_charger(url: str, cp_id: str, i: int, stats: Stats) -> Charger:
    from websockets.asyncio.client import connect

    ws = await connect(f"{url}/{cp_id}", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                       compression=None, ping_interval=None, max_size=1 << 20,
                       open_timeout=60, close_timeout=5)
    ch = Charger(ws, stats)
    await ch.call("BootNotification", boot_payload(i))
    return ch


async def heartbeat_loop(ch: Charger, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await ch.call("Heartbeat", {})


async def charger_loop(ch: Charger, i: int, id_tag: str, meter_values: int,
                       stop: asyncio.Event) -> None:
    energy = 1_000_000 + i * 10_000
    while not stop.is_set():
        start_energy = energy
        reply = await ch.call("StartTransaction", {
            "connectorId": 1, "idTag": id_tag, "meterStart": energy, "timestamp": now_ts()})
        if reply is None:
            await asyncio.sleep(0.1)
            continue
        tx_id = reply["transactionId"]
        await ch.call("StatusNotification", {
            "connectorId": 1, "errorCode": "NoError", "status": "Charging", "timestamp": now_ts()})
        for _ in range(meter_values):
            energy += 37
            await ch.call("MeterValues", {"connectorId": 1, "transactionId": tx_id,
                                          "meterValue": sampled(energy, now_ts())})
        await ch.call("Heartbeat", {})
        energy += 11
        ts = now_ts()
        await ch.call("StopTransaction", {
            "transactionId": tx_id, "idTag": id_tag, "meterStop": energy, "timestamp": ts,
            "reason": "Local",
            "transactionData": [
                {"timestamp": ts, "sampledValue": [
                    {"value": str(start_energy), "context": "Transaction.Begin",
                     "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]},
                {"timestamp": ts, "sampledValue": [
                    {"value": str(energy), "context": "Transaction.End",
                     "measurand": "Energy.Active.Import.Register", "unit": "Wh"}]},
            ]})


def percentiles_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    s = sorted(values)
    n = len(s)

    def q(p: float) -> float:  # nearest rank
        return s[min(n - 1, max(0, math.ceil(p * n) - 1))] * 1000

    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": s[-1] * 1000}


async def open_many(url: str, ids: list[tuple[str, int]], stats: Stats, concurrency: int
                    ) -> list[Charger | BaseException]:
    sem = asyncio.Semaphore(concurrency)

    async def one(cp_id: str, i: int) -> Charger:
        async with sem:
            return await open_charger(url, cp_id, i, stats)

    return await asyncio.gather(*(one(c, i) for c, i in ids), return_exceptions=True)


async def close_all(chargers: list[Charger]) -> None:
    await asyncio.gather(*(c.ws.close() for c in chargers), return_exceptions=True)


async def loadgen(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    prefix = args.prefix
    t_conn = time.perf_counter()
    opened = await open_many(args.url, [(f"{prefix}{i:05d}", i) for i in range(args.chargers)],
                             stats, args.connect_concurrency)
    chargers = [c for c in opened if isinstance(c, Charger)]
    for exc in opened:
        if isinstance(exc, BaseException):
            stats.errors[f"connect: {type(exc).__name__}: {exc}"[:120]] += 1
    await asyncio.gather(*(c.call("StatusNotification", {
        "connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": now_ts()})
        for c in chargers))
    connect_s = time.perf_counter() - t_conn
    print(f"CONNECTED {len(chargers)} {connect_s:.2f}", flush=True)

    stop = asyncio.Event()
    go = time.perf_counter()
    stats.window_start = go + args.warmup
    stats.window_end = stats.window_start + args.seconds
    tasks = [asyncio.create_task(
        heartbeat_loop(c, stop) if args.mix == "heartbeat"
        else charger_loop(c, i, f"{args.tag_prefix}{i:05d}", args.meter_values, stop))
        for i, c in enumerate(chargers)]
    marks: dict[str, Any] = {}

    async def timer() -> None:
        await asyncio.sleep(max(0.0, stats.window_start - time.perf_counter()))
        marks["srv0"] = proc_cpu_seconds(args.server_pid)
        marks["cli0"] = time.process_time()
        marks["w0"] = time.perf_counter()
        print("WINDOW_START", flush=True)
        await asyncio.sleep(max(0.0, stats.window_end - time.perf_counter()))
        marks["srv1"] = proc_cpu_seconds(args.server_pid)
        marks["cli1"] = time.process_time()
        marks["w1"] = time.perf_counter()
        marks["rss"] = proc_rss_kib(args.server_pid)
        print("WINDOW_END", flush=True)
        stop.set()

    timer_task = asyncio.create_task(timer())
    done, pending = await asyncio.wait(tasks, timeout=args.warmup + args.seconds + 60)
    for t in pending:
        t.cancel()
        stats.errors["charger did not finish (timeout)"] += 1
    for t in done:
        failure = t.exception()
        if failure is not None:
            stats.errors[f"charger: {type(failure).__name__}: {failure}"[:120]] += 1
    if not timer_task.done():
        timer_task.cancel()
    await close_all(chargers)

    window = marks.get("w1", 0) - marks.get("w0", 0)
    actions = {a: {"count": len(v), **percentiles_ms(v)} for a, v in sorted(stats.lat.items())}
    every = [x for v in stats.lat.values() for x in v]
    total = len(every)
    return {
        "chargers": len(chargers),
        "connect_s": connect_s,
        "window_s": window,
        "messages": total,
        "msgs_per_s": total / window if window > 0 else 0.0,
        "latency_ms": percentiles_ms(every),
        "actions": actions,
        "totals_ok": dict(stats.total_ok),
        "call_errors": dict(stats.call_errors),
        "errors": dict(stats.errors),
        "server_cpu_pct": 100 * (marks["srv1"] - marks["srv0"]) / window if window else 0.0,
        "client_cpu_pct": 100 * (marks["cli1"] - marks["cli0"]) / window if window else 0.0,
        "server_rss_kib_end": marks.get("rss"),
    }


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    stats = Stats()
    pid = args.server_pid
    warm = await open_many(args.url, [(f"{args.prefix}W{i:04d}", i) for i in range(args.warm)],
                           stats, args.connect_concurrency)
    await asyncio.sleep(args.settle)
    rss0 = proc_rss_kib(pid)
    t0 = time.perf_counter()
    opened = await open_many(args.url, [(f"{args.prefix}I{i:05d}", i)
                                        for i in range(args.connections)],
                             stats, args.connect_concurrency)
    open_s = time.perf_counter() - t0
    chargers = [c for c in opened if isinstance(c, Charger)]
    failed = len(opened) - len(chargers)
    await asyncio.sleep(args.settle)
    rss1 = proc_rss_kib(pid)
    # still open?
    alive = sum(1 for c in chargers if c.ws.state.name == "OPEN")
    await close_all(chargers + [c for c in warm if isinstance(c, Charger)])
    n = len(chargers)
    return {"connections": n, "failed": failed, "alive": alive, "open_s": open_s,
            "rss_before_kib": rss0, "rss_after_kib": rss1,
            "kib_per_conn": (rss1 - rss0) / n if n else 0.0,
            "call_errors": dict(stats.call_errors), "errors": dict(stats.errors)}


def loadgen_main(args: argparse.Namespace) -> None:
    pin(args.client_core)
    raise_nofile()
    result = asyncio.run(loadgen(args) if args.role == "loadgen" else idle(args))
    print("RESULT " + json.dumps(result), flush=True)


# ================================================================================================
# The orchestrator
# ================================================================================================

class ServerProc:
    """A server process and the ports it printed."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, log_path: Path,
                 ocpp_port: int, api_port: int | None) -> None:
        self.proc = proc
        self.name = name
        self.log_path = log_path
        self.ocpp_port = ocpp_port
        self.api_port = api_port

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def ocpp_url(self) -> str:
        return f"ws://127.0.0.1:{self.ocpp_port}/ocpp"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _read_port_line(proc: subprocess.Popen[bytes], marker: str, timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith(marker):
                    return line
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"server did not start (no {marker!r} line): {buf.decode(errors='replace')}")


def _taskset(core: int | None) -> list[str]:
    if core is None:
        return []
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core)]
    return []


def start_csms(database_url: str, workdir: Path, token: str, core: int | None,
               name: str) -> ServerProc:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CSMS_", "STRIPE_"))}
    env.update({
        "CSMS_DATABASE_URL": database_url,
        "CSMS_OCPP_HOST": "127.0.0.1", "CSMS_OCPP_PORT": "0",
        "CSMS_API_HOST": "127.0.0.1", "CSMS_API_PORT": "0",
        "CSMS_ADMIN_TOKEN": token,
        "CSMS_AUTO_REGISTER": "true",
        "CSMS_LOG_LEVEL": "WARNING",
    })
    csms_bin = VENV_BIN / "csms"
    cmd = [str(csms_bin), "serve"] if csms_bin.exists() else [sys.executable, "-m", "csms.cli",
                                                                "serve"]
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(_taskset(core) + cmd, cwd=workdir, env=env,
                                stdout=subprocess.PIPE, stderr=log_file, start_new_session=True)
    try:
        line = _read_port_line(proc, "csms: OCPP on port", 120)
    except RuntimeError as exc:
        proc.kill()
        raise RuntimeError(f"{exc}\ncsms serve log:\n{log_path.read_text(errors='replace')}"
                           ) from None
    words = line.replace(",", "").split()
    ocpp_port, api_port = int(words[4]), int(words[8])
    return ServerProc(proc, name, log_path, ocpp_port, api_port)


def start_stock(workdir: Path, core: int | None) -> ServerProc:
    log_path = workdir / "stock.log"
    cmd = [sys.executable, str(REPO / "bench" / "stock_ocpp_server.py"), "--port", "0"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(_taskset(core) + cmd, cwd=workdir, stdout=subprocess.PIPE,
                                stderr=log_file, start_new_session=True)
    line = _read_port_line(proc, "stock: OCPP on port", 60)
    return ServerProc(proc, "stock", log_path, int(line.split()[-1]), None)


def api(server: ServerProc, method: str, path: str, token: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{server.api_port}{path}", data=data,
                                 method=method, headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read() or b"null")


def run_child(role: str, args: argparse.Namespace, server: ServerProc, extra: list[str],
              on_line: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the load generator / idle opener in its own process; return its RESULT."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role,
           "--url", server.ocpp_url, "--server-pid", str(server.pid),
           "--connect-concurrency", str(args.connect_concurrency), *extra]
    if args.client_core is not None:
        cmd += ["--client-core", str(args.client_core)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    result: dict[str, Any] | None = None
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
        elif on_line and line.split(" ")[0] in on_line:
            on_line[line.split(" ")[0]](line)
        elif line.startswith("CONNECTED"):
            _, n, secs = line.split()
            log(f"{n} chargers connected and booted in {secs} s; warm-up {args.warmup:g} s, "
                f"then measuring {args.seconds:g} s")
    proc.wait()
    if result is None:
        raise RuntimeError(f"{role} process failed (exit {proc.returncode})")
    return result


# -- databases ------------------------------------------------------------------------------------

class Databases:
    """Fresh databases for each server: SQLite files in the work dir, or a throwaway PostgreSQL."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.cluster: Any = None
        if kind == "postgres":
            sys.path.insert(0, str(REPO))
            from tests.pg import start_postgres

            log("starting a throwaway PostgreSQL cluster (tests/pg.py)")
            self.cluster = start_postgres(workdir)

    def new(self, name: str) -> str:
        if self.cluster is not None:
            return str(self.cluster.create_database(name))
        return f"sqlite+aiosqlite:///{self.workdir / (name + '.db')}"

    def counts(self, url: str) -> dict[str, int]:
        """Rows persisted, counted directly in the database."""
        queries = {
            "tx_completed": "SELECT count(*) FROM \"transaction\" WHERE status = 'completed'",
            "tx_active": "SELECT count(*) FROM \"transaction\" WHERE status = 'active'",
            "tx_other": "SELECT count(*) FROM \"transaction\" "
                        "WHERE status NOT IN ('completed', 'active')",
            "meter_samples": "SELECT count(*) FROM meter_sample",
            "charge_points": "SELECT count(*) FROM charge_point",
        }
        if self.cluster is None:
            path = url.split("///", 1)[1]
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                return {k: int(conn.execute(q).fetchone()[0]) for k, q in queries.items()}
        import asyncpg  # noqa: PLC0415

        async def run() -> dict[str, int]:
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                return {k: int(await conn.fetchval(q)) for k, q in queries.items()}
            finally:
                await conn.close()

        return asyncio.run(run())

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


# -- profiling ------------------------------------------------------------------------------------

def find_py_spy() -> str | None:
    for cand in (VENV_BIN / "py-spy", shutil.which("py-spy")):
        if cand and Path(cand).exists():
            return str(cand)
    return None


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's raw (collapsed) output."""
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        thread = ""
        while frames and frames[0].startswith(("process", "thread")):
            if frames[0].startswith("thread"):
                thread = frames[0]
                threads[thread] += count
            frames = frames[1:]
        if not frames:
            continue
        self_c[_short(frames[-1])] += count
        packages[_category(frames[-1], thread)] += count
        for f in {_short(f) for f in frames}:
            incl[f] += count
    pct = (lambda c: 100.0 * c / total) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "threads": {k: pct(v) for k, v in threads.most_common()},
        "packages": [(f, pct(c)) for f, c in packages.most_common()],
        "self": [(f, pct(c)) for f, c in self_c.most_common(top)],
        "inclusive": [(f, pct(c)) for f, c in incl.most_common(top * 2)],
    }


_CATEGORIES = (
    ("sqlalchemy/", "SQLAlchemy (ORM + Core)"),
    ("aiosqlite/", "aiosqlite (thread hand-off, main-thread side)"),
    ("asyncpg/", "asyncpg"),
    ("websockets/", "websockets"),
    ("prometheus_client/", "prometheus_client"),
    ("selectors.py", "event loop: epoll"),
    ("asyncio/", "event loop: asyncio"),
    ("greenlet", "greenlet"),
    ("csms/metering.py", "csms/metering.py"),
    ("csms/", "csms (other)"),
    ("fastjsonschema", "schema validation"),
    ("<string>", "schema validation"),
    ("json/", "stdlib json"),
    ("sqlmodel/", "sqlmodel/pydantic"),
    ("pydantic", "sqlmodel/pydantic"),
)


def _category(leaf: str, thread: str) -> str:
    """A sample's bucket, from its innermost frame (its "self" time)."""
    if thread and "MainThread" not in thread:
        return "other threads (aiosqlite workers: sqlite itself + hand-off)" \
            if "_connection_worker_thread" in thread or "aiosqlite" in leaf else \
            "other threads"
    for marker, name in _CATEGORIES:
        if marker in leaf:
            return name
    return "other"


def _short(frame: str) -> str:
    """'func (path/to/site-packages/pkg/mod.py:123)' -> 'func (pkg/mod.py)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", str(REPO) + "/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return f"{name} ({file})" if file else name


# -- one measurement ------------------------------------------------------------------------------

def measure_load(args: argparse.Namespace, server: ServerProc, name: str,
                 workdir: Path) -> dict[str, Any]:
    extra = ["--chargers", str(args.chargers), "--seconds", str(args.seconds),
             "--warmup", str(args.warmup), "--meter-values", str(args.meter_values),
             "--prefix", "BENCH", "--tag-prefix", "TAG", "--mix", args.mix]
    spy: dict[str, Any] = {}
    handlers: dict[str, Any] = {}
    py_spy = find_py_spy() if args.profile else None
    if args.profile and py_spy is None:
        log("--profile: py-spy not found (.venv/bin/pip install py-spy); no profile taken")
    if py_spy is not None:
        out = workdir / f"{name}-profile.txt"

        def start_spy(_line: str) -> None:
            log(f"py-spy: sampling the server for {args.seconds:g} s")
            spy["out"] = out
            spy["proc"] = subprocess.Popen(
                [py_spy, "record", "--pid", str(server.pid), "--duration",
                 str(max(1, int(args.seconds))), "--rate", str(args.profile_rate), "--format",
                 "raw", "--nonblocking", "--threads", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        handlers["WINDOW_START"] = start_spy
    result = run_child("loadgen", args, server, extra, handlers)
    if "proc" in spy:
        spy["proc"].wait(60)
        if spy["out"].exists():
            result["profile"] = summarise_profile(spy["out"])
            result["profile_file"] = str(spy["out"])
    return result


def measure_idle(args: argparse.Namespace, server: ServerProc) -> dict[str, Any]:
    return run_child("idle", args, server, [
        "--connections", str(args.idle_connections), "--warm", "50",
        "--settle", str(args.settle), "--prefix", "IDLE"])


def verify_persistence(dbs: Databases, url: str, server: ServerProc, token: str,
                       load: dict[str, Any], meter_values: int) -> dict[str, Any]:
    ok = load["totals_ok"]
    starts, stops = ok.get("StartTransaction", 0), ok.get("StopTransaction", 0)
    mvs = ok.get("MeterValues", 0)
    api_error = None
    try:
        api_items = api(server, "GET", "/api/v1/transactions?status=completed&limit=1000",
                        token)["items"]
    except Exception as exc:  # noqa: BLE001 - reported, the direct count still runs
        api_items = []
        body = exc.read().decode(errors="replace")[:200] if hasattr(exc, "read") else ""
        api_error = f"{exc} {body}".strip()
        log(f"API check failed: {api_error}; server log tail:\n{server.log_tail(15)}")
    counts = dbs.counts(url)
    expected_samples = mvs * 4 + stops * 2
    checks: dict[str, tuple[Any, Any]] = {
        "api_completed_listed": (len(api_items) if api_error is None else f"API error {api_error}",
                                 min(1000, stops)),
        "db_completed == StopTransaction acks": (counts["tx_completed"], stops),
        "db_transactions == StartTransaction acks":
            (counts["tx_completed"] + counts["tx_active"], starts),
        "db_meter_samples == 4*MeterValues + 2*Stop": (counts["meter_samples"], expected_samples),
        "db_orphans_and_others == 0": (counts["tx_other"], 0),
    }
    energies_ok = all((t.get("energy_wh") or 0) > 0 for t in api_items)
    return {"counts": counts, "checks": {k: {"got": g, "want": w, "ok": g == w}
                                         for k, (g, w) in checks.items()},
            "energy_positive": energies_ok,
            "ok": all(g == w for g, w in checks.values()) and energies_ok}


# -- report ---------------------------------------------------------------------------------------

def fmt_lat(d: dict[str, float]) -> str:
    return f"{d['p50']:7.1f} {d['p90']:7.1f} {d['p99']:7.1f} {d['max']:7.1f}"


def print_load(title: str, r: dict[str, Any]) -> None:
    print(f"\n== {title} ==")
    print(f"chargers {r['chargers']}, measured window {r['window_s']:.1f} s "
          f"(after warm-up), connect+boot {r['connect_s']:.1f} s")
    print(f"{'action':<20} {'count':>8} {'msg/s':>8} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7}")
    w = r["window_s"] or 1
    for action, a in r["actions"].items():
        print(f"{action:<20} {a['count']:>8} {a['count'] / w:>8.0f} {fmt_lat(a)}")
    print(f"{'ALL':<20} {r['messages']:>8} {r['msgs_per_s']:>8.0f} {fmt_lat(r['latency_ms'])}")
    print(f"CPU over the window: server {r['server_cpu_pct']:.0f}% of its core, "
          f"load generator {r['client_cpu_pct']:.0f}% of its core; "
          f"server RSS at end {((r.get('server_rss_kib_end') or 0) / 1024):.0f} MiB")
    if r["server_cpu_pct"] < 85 and r["client_cpu_pct"] > 90:
        print("NOTE: the load generator was the bottleneck (its core saturated, the server's "
              "not): the msg/s above is a lower bound for the server.")
    n_err = sum(r["call_errors"].values()) + sum(r["errors"].values())
    print(f"CALLERRORs: {sum(r['call_errors'].values())}, other errors: "
          f"{sum(r['errors'].values())}" + ("" if not n_err else
                                            f"  {r['call_errors']} {r['errors']}"))


def print_profile(p: dict[str, Any], file: str) -> None:
    print(f"\n== py-spy profile of the server ({p['samples']} samples; raw: {file}) ==")
    if p["threads"]:
        print("threads: " + ", ".join(f"{k} {v:.0f}%" for k, v in p["threads"].items()))
    print("self time by package (innermost frame):")
    for f, v in p["packages"]:
        print(f"  {v:5.1f}%  {f}")
    print("top self time:")
    for f, v in p["self"][:15]:
        print(f"  {v:5.1f}%  {f}")
    print("top inclusive time:")
    for f, v in p["inclusive"][:30]:
        print(f"  {v:5.1f}%  {f}")


def main() -> None:
    parser = argparse.ArgumentParser(description="OCPP load benchmark of the CSMS",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--chargers", type=int, default=200, help="simulated chargers")
    parser.add_argument("--seconds", type=float, default=20, help="measured window")
    parser.add_argument("--warmup", type=float, default=5, help="load before the window")
    parser.add_argument("--meter-values", type=int, default=4,
                        help="MeterValues per transaction (4 sampled values each)")
    parser.add_argument("--mix", choices=("full", "heartbeat"), default="full",
                        help="full: the transaction mix; heartbeat: Heartbeat only (no database "
                             "write: the protocol path's ceiling)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--idle-connections", type=int, default=1000,
                        help="idle connections for the memory measurement (0: skip)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds to wait before each RSS reading")
    parser.add_argument("--compare-stock", action="store_true",
                        help="also run the load against bench/stock_ocpp_server.py")
    parser.add_argument("--profile", action="store_true",
                        help="sample the CSMS server with py-spy during the window "
                             "(slows it a little: quote the numbers of a run without it)")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples/s")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--connect-concurrency", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write all results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (databases, logs)")
    # internal: the load generator / idle opener processes
    parser.add_argument("--role", choices=("main", "loadgen", "idle"), default="main",
                        help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="BENCH", help=argparse.SUPPRESS)
    parser.add_argument("--tag-prefix", default="TAG", help=argparse.SUPPRESS)
    parser.add_argument("--connections", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=int, default=50, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role != "main":
        loadgen_main(args)
        return

    ncpu = os.cpu_count() or 1
    if ncpu < 2:
        log("only one CPU: server and load generator share it (numbers are pessimistic)")
        args.server_core = args.client_core = None
    raise_nofile()
    # The orchestrator (and PostgreSQL, started from here) stay off the server's core.
    pin(args.client_core)
    load_avg = float(Path("/proc/loadavg").read_text().split()[0])
    if load_avg > 0.5:
        log(f"the machine is busy (load average {load_avg:.2f}): numbers may come out low")
    workdir = Path(tempfile.mkdtemp(prefix="csms-bench-"))
    token = secrets.token_hex(16)
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(args).items()
                                          if k not in ("url", "server_pid", "role")}}
    dbs = Databases(args.database, workdir)
    t_start = time.monotonic()
    try:
        # 1+2+3: load, latency, persistence
        url = dbs.new("bench_load")
        log(f"starting csms serve on {args.database} (core {args.server_core}), "
            f"work dir {workdir}")
        server = start_csms(url, workdir, token, args.server_core, "csms-load")
        try:
            for i in range(args.chargers):
                api(server, "PUT", f"/api/v1/id-tags/TAG{i:05d}", token, {"status": "Accepted"})
            load = measure_load(args, server, "csms", workdir)
            results["csms_load"] = load
            log("verifying persistence through the API and the database")
            results["persistence"] = verify_persistence(dbs, url, server, token, load,
                                                        args.meter_values)
        finally:
            server.stop()
        # 4: memory per idle connection, on a fresh server
        if args.idle_connections > 0:
            url = dbs.new("bench_idle")
            server = start_csms(url, workdir, token, args.server_core, "csms-idle")
            try:
                log(f"memory: opening {args.idle_connections} idle connections")
                results["csms_idle"] = measure_idle(args, server)
            finally:
                server.stop()
        # 5: the stock library reference
        if args.compare_stock:
            log("stock ocpp library server (bench/stock_ocpp_server.py)")
            server = start_stock(workdir, args.server_core)
            try:
                stock_args = argparse.Namespace(**{**vars(args), "profile": False})
                results["stock_load"] = measure_load(stock_args, server, "stock", workdir)
                if args.idle_connections > 0:
                    results["stock_idle"] = measure_idle(args, server)
            finally:
                server.stop()
    finally:
        dbs.close()
        if not args.keep and not args.profile:
            shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = time.monotonic() - t_start
    results["load_average_before"] = load_avg
    report(args, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    load = results["csms_load"]
    print(f"\nOCPP load benchmark: {args.chargers} chargers, {args.meter_values} MeterValues "
          f"per transaction, database {args.database}, server pinned to core "
          f"{args.server_core}, load generator to core {args.client_core}")
    print_load(f"CSMS (csms serve, {args.database}, persistence included)", load)
    per = results.get("persistence")
    if per:
        print("persistence: " + ("OK" if per["ok"] else "MISMATCH") + " - " + ", ".join(
            f"{k} {v['got']}" + ("" if v["ok"] else f" (want {v['want']})")
            for k, v in per["checks"].items()))
    if "profile" in load:
        print_profile(load["profile"], load["profile_file"])
    idle = results.get("csms_idle")
    if idle:
        print(f"\n== memory per idle connection (CSMS) ==\n{idle['connections']} connections "
              f"({idle['alive']} still open, {idle['failed']} failed), each after one "
              f"BootNotification: VmRSS {idle['rss_before_kib'] / 1024:.1f} -> "
              f"{idle['rss_after_kib'] / 1024:.1f} MiB = {idle['kib_per_conn']:.1f} KiB per "
              f"connection")
    stock = results.get("stock_load")
    if stock:
        print_load("stock ocpp library (bench/stock_ocpp_server.py, no database)", stock)
        si = results.get("stock_idle")
        if si:
            print(f"stock memory: {si['kib_per_conn']:.1f} KiB per idle connection")
    # verdict
    lat = load["latency_ms"]
    errors = sum(load["call_errors"].values()) + sum(load["errors"].values())
    parts = [
        (load["msgs_per_s"] >= BUDGET_MSGS,
         f"{load['msgs_per_s']:,.0f} msg/s (budget >= {BUDGET_MSGS:,.0f})"),
        (load["messages"] > 0 and lat["p99"] <= BUDGET_P99_MS,
         f"p99 {lat['p99']:.1f} ms (budget <= {BUDGET_P99_MS:g})"),
    ]
    if idle:
        parts.append((idle["kib_per_conn"] <= BUDGET_KIB_PER_CONN,
                      f"{idle['kib_per_conn']:.1f} KiB/idle connection "
                      f"(budget <= {BUDGET_KIB_PER_CONN:g})"))
    parts.append((errors == 0, f"{errors} errors"))
    if per:
        parts.append((per["ok"], "persistence " + ("verified" if per["ok"] else "MISMATCH")))
    if stock:
        parts.append((True, f"stock library {stock['msgs_per_s']:,.0f} msg/s "
                            f"(reference ~{STOCK_REFERENCE:,.0f})"))
    verdict = "PASS" if all(ok for ok, _ in parts) else "FAIL"
    if args.mix != "full":
        verdict += " (heartbeat-only mix: NOT the budget's mixed load)"
    detail = "; ".join(("" if ok else "MISSED: ") + text for ok, text in parts)
    if results["load_average_before"] > 0.5:
        print(f"\nWARNING: load average {results['load_average_before']:.2f} before the run: "
              "other processes shared the cores; re-run on an idle machine for the record.")
    print(f"\nVERDICT: {verdict} - {detail} [run took {results['elapsed_s']:.0f} s]")


if __name__ == "__main__":
    main()
