"""Throwaway PostgreSQL cluster for tests.

    cluster = start_postgres(tmp_path_factory.mktemp("pg"))
    cluster.url                      # postgresql+asyncpg://postgres@127.0.0.1:PORT/csms_test
    url = cluster.create_database("t_abc")            # sync; fresh empty database
    url = await cluster.acreate_database("t_abc")     # same, from async code (no blocking)
    cluster.stop()

The cluster uses the Debian server binaries (``/usr/lib/postgresql/<ver>/bin``, highest version;
override with ``CSMS_PG_BIN=/path/to/bin``). Its files live in a fresh directory under /dev/shm
(tmpfs, when it has >= 4 GiB free; override with ``CSMS_PG_TMPDIR``), else under the system temp
dir (root) or ``base_dir`` (non-root); ``stop()`` deletes that directory. ``initdb`` refuses to
run as root, so as root that directory is owned by ``postgres`` and every server command runs
through ``runuser -u postgres --`` (pytest's 0700 root-owned tmp dirs are not reachable by that
user, which is why ``base_dir`` is not used then).

Drop per-test databases when done (``adrop_database``, ~5 ms): each one costs ~8 MB, in RAM when
the cluster is on /dev/shm.

It is tuned for tests, not durability: fsync, synchronous_commit and full_page_writes are off.
Only TCP on 127.0.0.1 is used (no Unix socket), authentication is ``trust``.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["PgCluster", "PostgresNotAvailable", "find_pg_bin", "start_postgres"]

DEFAULT_DB = "csms_test"
SUPERUSER = "postgres"
HOST = "127.0.0.1"

# Server settings for a disposable test cluster.
TEST_SETTINGS: dict[str, str] = {
    "listen_addresses": HOST,
    "unix_socket_directories": "",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_connections": "200",
    "shared_buffers": "128MB",
    # each CREATE DATABASE writes ~8 MB of WAL: checkpoint often enough to keep pg_wal small
    # (the cluster may live in RAM, /dev/shm)
    "checkpoint_timeout": "30min",
    "max_wal_size": "256MB",
    "min_wal_size": "32MB",
    "log_min_messages": "warning",
    "log_line_prefix": "%m [%p] %d ",
    "timezone": "UTC",
}

T = TypeVar("T")

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresNotAvailable(RuntimeError):
    """PostgreSQL server binaries (or the ``postgres`` OS user when root) are missing."""


def find_pg_bin() -> Path:
    """Directory holding ``initdb``, ``pg_ctl`` and ``postgres``; highest version wins."""
    override = os.environ.get("CSMS_PG_BIN")
    if override:
        p = Path(override)
        if not (p / "initdb").exists():
            raise PostgresNotAvailable(f"CSMS_PG_BIN={override} has no initdb")
        return p
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> tuple[int, ...]:
        v = Path(path).parent.parent.name
        return tuple(int(x) for x in re.findall(r"\d+", v)) or (0,)

    if candidates:
        return Path(max(candidates, key=version)).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresNotAvailable(
        "PostgreSQL server not found: no /usr/lib/postgresql/*/bin/initdb and no initdb on PATH. "
        "Install it (Debian: apt-get install -y postgresql-15) or set CSMS_PG_BIN."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _quote_ident(name: str) -> str:
    if not _IDENT_RE.match(name):
        raise ValueError(f"unsafe database name {name!r}: use [A-Za-z_][A-Za-z0-9_]*, <= 63 chars")
    return '"' + name + '"'


@dataclass(eq=False)
class PgCluster:
    bin_dir: Path
    root_dir: Path  # everything of this cluster (data dir, log)
    port: int
    as_postgres_user: bool  # commands go through `runuser -u postgres --`
    version: str = ""
    _stopped: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- addresses -------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.root_dir / "postgres.log"

    @property
    def host(self) -> str:
        return HOST

    @property
    def user(self) -> str:
        return SUPERUSER

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL (asyncpg driver) for a database of this cluster."""
        return f"postgresql+asyncpg://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    def dsn_for(self, dbname: str) -> str:
        """libpq / asyncpg DSN for a database of this cluster."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        return self.url_for(DEFAULT_DB)

    @property
    def dsn(self) -> str:
        return self.dsn_for(DEFAULT_DB)

    # --- databases -------------------------------------------------------------------------
    async def acreate_database(self, name: str, template: str = "template0") -> str:
        """Create an empty database (copy of ``template``) and return its SQLAlchemy URL.

        ``template`` may be a database you prepared once (e.g. migrated schema) to clone it per
        test; it must have no open connections while being copied.
        """
        import asyncpg  # test dependency of the project (asyncpg is a runtime dep)

        conn = await asyncpg.connect(self.dsn_for("postgres"))
        try:
            await conn.execute(
                f"CREATE DATABASE {_quote_ident(name)} TEMPLATE {_quote_ident(template)}"
            )
        finally:
            await conn.close()
        return self.url_for(name)

    async def adrop_database(self, name: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn_for("postgres"))
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
        finally:
            await conn.close()

    def create_database(self, name: str, template: str = "template0") -> str:
        """Synchronous :meth:`acreate_database` (safe to call with or without a running loop)."""
        return _run_sync(self.acreate_database(name, template))

    def drop_database(self, name: str) -> None:
        _run_sync(self.adrop_database(name))

    # --- lifecycle -------------------------------------------------------------------------
    def _cmd(self, *args: str) -> list[str]:
        return _as_postgres(list(args), self.as_postgres_user)

    def stop(self) -> None:
        """Stop the server (immediate shutdown: the data is thrown away) and clean up."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                self._cmd(
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ),
                cwd=self.root_dir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        shutil.rmtree(self.root_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as e:  # re-raised in the caller's thread
            error.append(e)

    t = threading.Thread(target=target, name="pg-sync")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def _as_postgres(args: list[str], as_postgres_user: bool) -> list[str]:
    if not as_postgres_user:
        return args
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", SUPERUSER, "--", *args]
    # util-linux without runuser: fall back to su with a quoted command line
    import shlex

    return ["su", SUPERUSER, "-s", "/bin/sh", "-c", shlex.join(args)]


def _fast_tmp_dir() -> str | None:
    """Where to put the cluster: $CSMS_PG_TMPDIR, else /dev/shm (tmpfs: database creation is
    about twice as fast as on ext4) when it has room, else None (caller's default)."""
    env = os.environ.get("CSMS_PG_TMPDIR")
    if env:
        return env
    shm = "/dev/shm"
    try:
        st = os.statvfs(shm)
    except OSError:
        return None
    if os.access(shm, os.W_OK) and st.f_bavail * st.f_frsize >= 4 * 1024**3:
        return shm
    return None


def _make_root_dir(base_dir: Path, as_postgres_user: bool) -> Path:
    """A fresh directory for the cluster; always deleted by stop()."""
    parent = _fast_tmp_dir()
    if not as_postgres_user:
        if parent is None:
            parent = str(base_dir)
            Path(parent).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="csms-pg-", dir=parent))
    try:
        import pwd

        pw = pwd.getpwnam(SUPERUSER)
    except KeyError as e:
        raise PostgresNotAvailable(
            f"running as root but there is no '{SUPERUSER}' OS user to run the server as "
            "(initdb refuses root). Install the Debian postgresql package, which creates it."
        ) from e
    # /dev/shm or the system temp dir (both 1777) are reachable by postgres; pytest's base_dir
    # (0700, owned by root) is not.
    root = Path(tempfile.mkdtemp(prefix="csms-pg-", dir=parent))
    os.chown(root, pw.pw_uid, pw.pw_gid)
    os.chmod(root, 0o700)
    return root


def start_postgres(base_dir: Path, *, dbname: str = DEFAULT_DB, attempts: int = 3) -> PgCluster:
    """initdb + start a throwaway cluster on a free 127.0.0.1 port and create ``dbname``."""
    bin_dir = find_pg_bin()
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (bin_dir / tool).exists():
            raise PostgresNotAvailable(f"{bin_dir / tool} is missing (incomplete PostgreSQL)")
    as_postgres_user = os.geteuid() == 0
    root = _make_root_dir(base_dir, as_postgres_user)
    cluster = PgCluster(
        bin_dir=bin_dir,
        root_dir=root,
        port=0,
        as_postgres_user=as_postgres_user,
        version=bin_dir.parent.name,
    )
    _registry.add(cluster)
    try:
        _initdb(cluster)
        last_error = ""
        for _ in range(attempts):
            cluster.port = _free_port()
            ok, last_error = _pg_ctl_start(cluster)
            if ok:
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start: {last_error}\n{cluster.log_tail()}")
        cluster.create_database(dbname)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _initdb(cluster: PgCluster) -> None:
    proc = subprocess.run(
        cluster._cmd(
            str(cluster.bin_dir / "initdb"),
            "-D",
            str(cluster.data_dir),
            "-U",
            SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ),
        cwd=cluster.root_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"initdb failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    # Settings go in postgresql.auto.conf-like include: append to postgresql.conf (we own it).
    conf = "\n".join(f"{k} = '{v}'" for k, v in TEST_SETTINGS.items()) + "\n"
    conf_path = cluster.data_dir / "postgresql.conf"
    with open(conf_path, "a", encoding="utf-8") as f:  # root can write postgres' file
        f.write("\n# --- tests/pg.py ---\n" + conf)


def _pg_ctl_start(cluster: PgCluster) -> tuple[bool, str]:
    proc = subprocess.run(
        cluster._cmd(
            str(cluster.bin_dir / "pg_ctl"),
            "-D",
            str(cluster.data_dir),
            "-l",
            str(cluster.log_file),
            "-o",
            f"-p {cluster.port}",
            "-w",
            "-t",
            "60",
            "start",
        ),
        cwd=cluster.root_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0:
        return True, ""
    # port taken between _free_port() and bind: let the caller retry with another port
    return False, f"pg_ctl exit {proc.returncode}: {proc.stdout.strip()} {proc.stderr.strip()}"


# Stop clusters the test process forgot about (crash in a fixture, Ctrl-C): no orphan servers.
_registry: weakref.WeakSet[PgCluster] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for c in list(_registry):
        c.stop()


if __name__ == "__main__":  # manual check: python tests/pg.py
    t0 = time.perf_counter()
    with start_postgres(Path(tempfile.gettempdir())) as c:
        t1 = time.perf_counter()
        print(f"started {c.version} at {c.url} in {t1 - t0:.2f}s")
        for i in range(5):
            t = time.perf_counter()
            c.create_database(f"t{i}")
            print(f"create_database: {(time.perf_counter() - t) * 1000:.1f} ms")
    print(f"stopped in {time.perf_counter() - t1:.2f}s")
