"""A real PostgreSQL for the persistence tests, and fixtures that run a test on SQLite and PostgreSQL.

The server is the local one at ``127.0.0.1:5432`` (trust auth, maintenance database ``test``) when it
answers; otherwise a private cluster made with ``initdb`` in a temporary directory and started with
``pg_ctl`` on a free port (as root, both run as the ``postgres`` user, since PostgreSQL refuses to
run as root). ``FLEETGRID_TEST_POSTGRES=private`` forces the private cluster, ``=skip`` skips the
PostgreSQL half of the tests. Every test module gets its own freshly created database, dropped after.

Use from a test module (pytest puts ``tests/`` on ``sys.path``)::

    from postgres import database_url, engine, postgres_database_url, postgres_server, session
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import getpass
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from mosquitto import free_port
from psycopg import sql
from sqlalchemy import Engine, delete, text
from sqlalchemy.orm import Session

from aggregator.db.migrate import upgrade
from aggregator.db.models import Base
from aggregator.db.session import make_engine, make_sessionmaker

LOCAL_HOST = "127.0.0.1"
LOCAL_PORT = 5432
SUPERUSER = "postgres"
MAINTENANCE_DB = "test"
MODE = os.environ.get("FLEETGRID_TEST_POSTGRES", "auto")  # auto | private | skip


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    maintenance_db: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=self.maintenance_db, autocommit=True
        )

    def answers(self) -> bool:
        try:
            with psycopg.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                dbname=self.maintenance_db,
                connect_timeout=2,
            ) as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    @contextlib.contextmanager
    def fresh_database(self) -> Iterator[str]:
        """A new, uniquely named, empty database (its URL), dropped afterwards even if still in use."""
        name = f"fleetgrid_test_{uuid.uuid4().hex[:12]}"
        with self._admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.url(name)
        finally:
            with self._admin() as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


class PrivateCluster:
    """``initdb`` + ``pg_ctl`` in a temporary directory, on a free port, listening on loopback only."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None or not _user_exists(SUPERUSER):
                pytest.skip("running as root and there is no 'postgres' user to run initdb as")
            self.run_as = ["runuser", "-u", SUPERUSER, "--"]
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="fleetgrid-pg-"))
        if self.run_as:
            shutil.chown(self.directory, user=SUPERUSER)
        self.data = self.directory / "data"
        self.user = SUPERUSER if self.run_as else getpass.getuser()

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.run_as, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

    def start(self) -> PostgresServer:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync")
        options = f"-p {self.port} -k {self.directory} -c listen_addresses={LOCAL_HOST} -c fsync=off"
        log = str(self.directory / "postgres.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        server = PostgresServer(LOCAL_HOST, self.port, self.user, "postgres")
        with server._admin() as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(MAINTENANCE_DB)))
        return PostgresServer(LOCAL_HOST, self.port, self.user, MAINTENANCE_DB)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def _postgres_bin() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found is None:
        pytest.skip("no PostgreSQL at 127.0.0.1:5432 and no initdb to start one")
    return Path(found).parent


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@functools.cache
def _private_server() -> PostgresServer:
    """One private cluster per test run, however many modules import ``postgres_server`` (pytest makes
    a separate session fixture per importing module); stopped when the interpreter exits."""
    cluster = PrivateCluster()
    atexit.register(cluster.stop)
    return cluster.start()


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    if MODE == "skip":
        pytest.skip("FLEETGRID_TEST_POSTGRES=skip")
    local = PostgresServer(LOCAL_HOST, LOCAL_PORT, SUPERUSER, MAINTENANCE_DB)
    if MODE != "private" and local.answers():
        return local
    return _private_server()


@pytest.fixture(scope="module")
def postgres_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for this test module."""
    with postgres_server.fresh_database() as url:
        yield url


# --------------------------------------------------------------------- both backends, one test


BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty database for this module: an SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'fleetgrid.sqlite'}"
    url: str = request.getfixturevalue("postgres_database_url")
    return url


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    """The module's database, migrated to the latest revision."""
    upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on the migrated database; every table is emptied after the test."""
    with make_sessionmaker(engine)() as session:
        yield session
        session.rollback()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # The ledger refuses DELETE unless a purge is asked for (see migration 0003).
            connection.execute(text("SET LOCAL fleetgrid.ledger_purge = 'on'"))
        for table in reversed(Base.metadata.sorted_tables):
            connection.execute(delete(table))
