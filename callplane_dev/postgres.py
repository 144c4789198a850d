"""A real PostgreSQL server on loopback, for the local stack and the tests.

The call records of a deployed stack live in PostgreSQL; the local stack and the tests run the
same server (Debian's ``postgresql`` package, installed by ``scripts/tools/setup_tools.sh``)
rather than an imitation. :class:`LocalPostgres` initialises a cluster once in a directory of
its own (trust authentication, loopback only), then starts and stops ``postgres`` as a child
process; a later :meth:`~LocalPostgres.start` reuses the cluster and the port, so a test can
take the database away and bring it back.

PostgreSQL refuses to run as root. Run as root (a container, CI), the cluster belongs to the
``postgres`` user that the Debian package creates (else ``nobody``), and the server and
``initdb`` run as that user: the data directory must then be reachable by it (its parent
directories searchable by others, as ``/tmp`` and most checkouts are).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Final

import psycopg
from psycopg import sql

__all__ = ["LocalPostgres", "PostgresNotInstalled", "find_postgres"]

log = logging.getLogger("callplane.postgres")
SETUP_HINT: Final = "run scripts/tools/setup_tools.sh postgres"
USER: Final = "callplane"
DATABASE: Final = "callplane"
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0
SOCKET_PATH_MAX: Final = 100  # bytes; Linux's limit for a unix socket path is 107
SERVICE_USERS: Final = ("postgres", "nobody")  # who runs the server when we are root


class PostgresNotInstalled(RuntimeError):
    """``initdb`` or ``postgres`` is missing; the message says how to install them."""


def find_postgres() -> tuple[Path, Path]:
    """``initdb`` and ``postgres`` of one installation: from PATH, else the newest under
    ``/usr/lib/postgresql/*/bin`` (Debian does not put the server on PATH)."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(v) if (v := Path(p).parent.name).isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    for bin_dir in candidates:
        initdb, postgres = bin_dir / "initdb", bin_dir / "postgres"
        if os.access(initdb, os.X_OK) and os.access(postgres, os.X_OK):
            return initdb, postgres
    raise PostgresNotInstalled(
        f"PostgreSQL's initdb and postgres were not found on PATH or under "
        f"/usr/lib/postgresql/*/bin: {SETUP_HINT}"
    )


class LocalPostgres:
    """``postgres`` as a child process on ``127.0.0.1:port``, its cluster in ``data_dir``.

    ``await start()`` initialises the cluster the first time (user ``callplane``, trust
    authentication on loopback, ``fsync`` on), starts the server, waits until it accepts
    connections and creates the database ``callplane``. ``await stop()`` shuts it down.
    Port 0 picks a free port at the first start and keeps it for the next ones.
    """

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_tmp: Path | None = None

    @property
    def cluster_dir(self) -> Path:
        """The cluster itself (``PGDATA``)."""
        return self.data_dir / "cluster"

    @property
    def log_path(self) -> Path:
        """The server's log (``initdb``'s too), appended to by every start."""
        return self.data_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``callplane`` database."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = DATABASE) -> str:
        """The libpq connection string of ``database``, for psycopg and psql."""
        return f"host=127.0.0.1 port={self.port} user={USER} dbname={database}"

    async def start(self) -> None:
        """Initialise the cluster if needed, start the server and wait until it answers."""
        await asyncio.to_thread(self._start)

    async def stop(self) -> None:
        """Shut the server down: a fast shutdown (SIGINT, the default of ``pg_ctl stop``:
        sessions are ended, the data is checkpointed), SIGKILL after 10 s. SIGTERM is not
        used because it waits for every client to disconnect on its own."""
        await asyncio.to_thread(self._stop)

    async def discard(self) -> None:
        """Stop the server and delete its cluster: for throwaway data directories (tests,
        benchmarks), whose cluster may have been kept outside them (see ``postgres-location``)."""
        await self.stop()
        await asyncio.to_thread(shutil.rmtree, self.data_dir, True)

    # ---- blocking work, in a worker thread

    def _start(self) -> None:
        if self.pid is not None:
            return
        initdb, postgres = find_postgres()
        runner = _service_user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if runner is not None:
            if not _reachable(self.data_dir, runner):
                self.data_dir = _relocated(self.data_dir, runner)
            _check_reachable(self.data_dir, runner)
            _give(self.data_dir, runner)
            self.log_path.touch()
            _give(self.log_path, runner)
        if not (self.cluster_dir / "PG_VERSION").exists():
            self._initdb(initdb, runner)
        if self.port == 0:
            self.port = _free_port()
        sockets = self._socket_dir(runner)
        argv = [
            str(postgres),
            "-D", str(self.cluster_dir),
            "-p", str(self.port),
            "-k", str(sockets),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # a terminal's Ctrl-C is for the stack, which stops it
                user=_uid(runner),
                group=_gid(runner),
                extra_groups=_groups(runner),
            )
        try:
            self._wait_ready()
            self._create_database()
        except BaseException:
            self._stop()
            raise

    def _initdb(self, initdb: Path, runner: pwd.struct_passwd | None) -> None:
        # Into a fresh directory, renamed when complete: an interrupted initdb is redone.
        fresh = self.data_dir / "cluster.new"
        shutil.rmtree(fresh, ignore_errors=True)
        argv = [
            str(initdb),
            "-D", str(fresh),
            "-A", "trust",
            "-U", USER,
            "-E", "UTF8",
            "--no-locale",
            "--no-instructions",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                check=False,
                user=_uid(runner),
                group=_gid(runner),
                extra_groups=_groups(runner),
            )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {done.returncode}):\n{self._log_tail()}")
        with (fresh / "postgresql.conf").open("a") as conf:
            # pg_hba.conf from initdb -A trust only lists local and loopback connections.
            conf.write("\n# callplane local stack\nlisten_addresses = '127.0.0.1'\nfsync = on\n")
        fresh.rename(self.cluster_dir)

    def _socket_dir(self, runner: pwd.struct_passwd | None) -> Path:
        """Where the server's unix socket goes: in ``data_dir`` if the path is short enough,
        else in a temporary directory (removed at stop)."""
        inside = self.data_dir / "run"
        if len(os.fsencode(inside / f".s.PGSQL.{self.port}.lock")) <= SOCKET_PATH_MAX:
            inside.mkdir(mode=0o700, exist_ok=True)
            directory = inside
        else:
            self._socket_tmp = directory = Path(tempfile.mkdtemp(prefix="callplane-pg-"))
        if runner is not None:
            _give(directory, runner)
        return directory

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        proc = self._proc
        assert proc is not None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with code {proc.returncode} at start:\n{self._log_tail()}"
                )
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"postgres did not accept connections on 127.0.0.1:{self.port} within "
                        f"{START_TIMEOUT_S:g} s:\n{self._log_tail()}"
                    ) from None
                time.sleep(0.05)

    def _create_database(self) -> None:
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if exists is None:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        if self._socket_tmp is not None:
            shutil.rmtree(self._socket_tmp, ignore_errors=True)
            self._socket_tmp = None

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return f"(no log at {self.log_path})"


def _service_user() -> pwd.struct_passwd | None:
    """Who runs initdb and postgres: ourselves (None), or, as root, an unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError(
        "PostgreSQL refuses to run as root, and there is no 'postgres' or 'nobody' user to run "
        f"it as: {SETUP_HINT} (the package creates the postgres user)"
    )


def _uid(runner: pwd.struct_passwd | None) -> int | None:
    return None if runner is None else runner.pw_uid


def _gid(runner: pwd.struct_passwd | None) -> int | None:
    return None if runner is None else runner.pw_gid


def _groups(runner: pwd.struct_passwd | None) -> list[int] | None:
    return None if runner is None else []


def _give(path: Path, runner: pwd.struct_passwd) -> None:
    os.chown(path, runner.pw_uid, runner.pw_gid)


RELOCATED_ROOT = Path(tempfile.gettempdir()) / "callplane-postgres"


def _reachable(path: Path, runner: pwd.struct_passwd) -> bool:
    try:
        _check_reachable(path, runner)
    except RuntimeError:
        return False
    return True


def _relocated(data_dir: Path, runner: pwd.struct_passwd) -> Path:
    """Where the cluster of ``data_dir`` lives when the server's user cannot reach it (root's
    home and pytest's temporary folders are private): a folder of its own under the system's
    temporary directory, named after ``data_dir`` so that each data directory keeps one
    cluster across starts. ``data_dir/postgres-location`` says where it went."""
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
    RELOCATED_ROOT.mkdir(mode=0o711, exist_ok=True)
    RELOCATED_ROOT.chmod(0o711)  # others may pass through, not list
    target = RELOCATED_ROOT / digest
    target.mkdir(mode=0o700, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "postgres-location").write_text(
        f"{target}\n(PostgreSQL runs as {runner.pw_name!r}, which cannot enter {data_dir})\n"
    )
    log.info("PostgreSQL's cluster for %s is kept in %s", data_dir, target)
    return target


def _check_reachable(path: Path, runner: pwd.struct_passwd) -> None:
    """Raise unless ``runner`` may enter every parent directory of ``path``."""
    for parent in reversed(path.parents):
        mode = parent.stat()
        if mode.st_uid == runner.pw_uid:
            ok = bool(mode.st_mode & stat.S_IXUSR)
        elif mode.st_gid == runner.pw_gid:
            ok = bool(mode.st_mode & stat.S_IXGRP)
        else:
            ok = bool(mode.st_mode & stat.S_IXOTH)
        if not ok:
            raise RuntimeError(
                f"PostgreSQL runs as user {runner.pw_name!r} (it refuses root), which cannot "
                f"enter {parent}: choose a data directory it can reach (e.g. under /tmp), or "
                f"allow it in with chmod o+x {parent}"
            )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
