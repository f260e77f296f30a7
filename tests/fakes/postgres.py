"""A throwaway PostgreSQL server for the tests: initdb into a directory, postgres on 127.0.0.1.

Debian's `postgresql` package provides the binaries (/usr/lib/postgresql/VERSION/bin). postgres
refuses to run as root, so when the tests run as root the server runs as the `postgres` user
and its directory belongs to that user. Loopback only, trust authentication: nothing but this
machine can reach it, and no password exists that could leak. Durability is switched off
(fsync, full_page_writes, synchronous_commit): a test database never survives a crash anyway.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from fakes.waiting import wait_until

PG_ROOT = Path("/usr/lib/postgresql")
INSTALL_HINT = "install Debian's PostgreSQL server: apt-get install postgresql"
SERVICE_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """The test server could not be set up or started; the message says why and what to do."""


def find_bin_dir() -> Path:
    """The newest /usr/lib/postgresql/N/bin with initdb and postgres (DEPLOYBOT_PG_BIN wins)."""
    wanted = os.environ.get("DEPLOYBOT_PG_BIN")
    candidates = [Path(wanted)] if wanted else sorted(
        (p / "bin" for p in PG_ROOT.glob("*") if p.name.isdigit()),
        key=lambda p: int(p.parent.name), reverse=True)
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file():
            return bin_dir
    where = wanted or f"{PG_ROOT}/*/bin"
    raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, postgres) in {where}: "
                              f"{INSTALL_HINT}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_base_dir() -> Path:
    """A fresh directory the server's user can write (pytest's tmp dirs are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="deploybot-pg-"))
    if os.geteuid() == 0:
        account = _service_account()
        os.chown(base, account.pw_uid, account.pw_gid)
    return base


def _service_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root, but there is no `{SERVICE_USER}` user to run the server as "
            f"(postgres refuses root): {INSTALL_HINT}") from None


class PostgresServer:
    """One postgres process on 127.0.0.1:port with its data under `base_dir`.

    start() twice (after stop(remove_data=False)) brings the same cluster back on the same port:
    the tests of reconnection restart the server under their clients.
    """

    def __init__(self, base_dir: str | os.PathLike, *, port: int | None = None,
                 start_timeout: float = 30.0) -> None:
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_path = self.base_dir / "postgres.log"
        self.port = port
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.bin_dir: Path | None = None

    # -- running as the service user ----------------------------------------------------------

    def _as_service_user(self) -> dict:
        if os.geteuid() != 0:
            return {}
        account = _service_account()
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        assert self.bin_dir is not None
        done = subprocess.run(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-E", "UTF8",
             "--locale=C", "--no-sync", "--auth=trust", "-U", SERVICE_USER],
            capture_output=True, text=True, timeout=120, check=False, cwd=self.base_dir,
            **self._as_service_user())
        if done.returncode != 0:
            raise PostgresUnavailable(
                f"initdb {self.data_dir} failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n(is the directory writable by the server's user?)")

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> "PostgresServer":
        if self.process is not None:
            raise RuntimeError(f"the test PostgreSQL server on port {self.port} is running")
        self.bin_dir = self.bin_dir or find_bin_dir()
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self._initdb()
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            account = _service_account()
            os.chown(self.socket_dir, account.pw_uid, account.pw_gid)
        # A port picked here can be taken by someone else before postgres binds it: pick again.
        tries = 3 if self.port is None else 1
        for _ in range(tries):
            if tries > 1:
                self.port = _free_port()
            problem = self._launch()
            if problem is None:
                return self
        message = (f"the test PostgreSQL server did not start on 127.0.0.1:{self.port}: "
                   f"{problem}\n--- {self.log_path} ---\n{self.log_tail()}")
        if fresh:  # nothing worth keeping: the log is in the message
            shutil.rmtree(self.base_dir, ignore_errors=True)
        raise PostgresUnavailable(message)

    def _launch(self) -> str | None:
        """Start postgres and wait until it accepts connections; None, or what went wrong."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
                 "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.socket_dir),
                 "-c", "fsync=off", "-c", "full_page_writes=off",
                 "-c", "synchronous_commit=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.base_dir, **self._as_service_user())
        try:
            wait_until(self._accepts, self.start_timeout,
                       f"PostgreSQL to accept connections on 127.0.0.1:{self.port}", every=0.1)
        except (AssertionError, PostgresUnavailable) as exc:
            self.stop(remove_data=False)
            return str(exc)
        return None

    def _accepts(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise PostgresUnavailable(f"postgres exited with status {self.process.returncode}")
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                # ours, not another server that had the port (ours then fails to bind)
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.OperationalError:
            return False
        if Path(row[0]) != self.data_dir:
            raise PostgresUnavailable(f"another PostgreSQL server ({row[0]}) answers on "
                                      f"127.0.0.1:{self.port}")
        return True

    def stop(self, *, remove_data: bool = True, timeout: float = 20.0) -> None:
        """Stop our postgres by its PID; remove its directory unless `remove_data` is False.

        SIGINT is PostgreSQL's fast shutdown (ends open sessions); SIGTERM would wait for every
        client to disconnect. SIGKILL after `timeout` seconds.
        """
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if remove_data:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data (clients lose connections)."""
        self.stop(remove_data=False)
        self.start()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no log: {exc})"

    # -- databases ----------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SERVICE_USER}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn(), autocommit=True, connect_timeout=5)

    def create_database(self, name: str, template: str | None = None) -> str:
        """CREATE DATABASE name [TEMPLATE template]; returns its DSN. The template must have no
        open connections (PostgreSQL copies it file by file)."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self._admin() as conn:
            if conn.info.server_version >= 150000:
                # a small database is copied faster as files than through the WAL (the default)
                statement += sql.SQL(" STRATEGY FILE_COPY")
            conn.execute(statement)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE, ending any session still connected to it."""
        with self._admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                         .format(sql.Identifier(name)))

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
