"""Shared fixtures: demo data, warehouses on SQLite and PostgreSQL.

PostgreSQL: QUIMBI_TEST_POSTGRES_URL if set; else a throwaway server (initdb + pg_ctl in a temp
folder, unix socket only) where PostgreSQL's binaries exist; else the PostgreSQL tests skip with a
message. QUIMBI_REQUIRE_POSTGRES=1 (set by .ci/run) turns that skip into a failure.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from quimbi_pipeline.settings import PipelineSettings
from quimbi_pipeline.sources.demo import generate_demo
from quimbi_pipeline.storage import Warehouse, drop_postgres_schema

DATA = Path(__file__).parent / "data"
REQUIRE_PG = os.environ.get("QUIMBI_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def demo_small():
    return generate_demo(n_customers=1500, n_stores=2, seed=11)


@pytest.fixture
def settings() -> PipelineSettings:
    return PipelineSettings()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


WATCHDOG = """
import json, os, shutil, subprocess, sys, time
parent, stop, folder = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
while True:
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        break
    if not os.path.isdir(folder):  # stopped by the test session itself
        sys.exit(0)
    time.sleep(1)
subprocess.run(stop, capture_output=True, timeout=60)
shutil.rmtree(folder, ignore_errors=True)
"""


def pytest_configure(config):
    # TERM (a CI timeout, `kill`) stops the run the way Ctrl-C does: fixtures are torn down, servers stopped.
    def terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config, items):
    # A heavy scenario (a month of dates, a pool of stores) runs on PostgreSQL, the production path, in the default
    # suite, and on SQLite too in the full one (make test-all, CI): each backend's own code is covered by the
    # lighter tests of both, and the default suite stays within 10 minutes on 2 cores.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if item.get_closest_marker("heavy") and callspec is not None and callspec.params.get("warehouse_url") == "sqlite":
            item.add_marker(pytest.mark.slow)


class ThrowawayPostgres:
    def __init__(self):
        self.dir = None
        self.port = _free_port()
        initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            raise RuntimeError("no initdb/pg_ctl on this machine")
        self.as_user: list[str] = []
        self.dir = tempfile.mkdtemp(prefix="quimbi-pg-")
        if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise RuntimeError("running as root and there is no 'postgres' user to run a server") from exc
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self.dir, "data")
        self._run([initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        opts = f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._run([self.pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(self.dir, "log"), "-w", "start"])
        self.data = data
        self.url = f"postgresql+psycopg://postgres@/postgres?host={self.dir}&port={self.port}"
        # If this test process dies without its teardown (kill -9, a CI timeout), a watchdog in its own
        # session (so Ctrl-C on the terminal does not reach it first) stops the server and removes its folder.
        subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), json.dumps(self.as_user + [self.pg_ctl, "-D", data, "-m", "immediate", "stop"]),
                          self.dir], start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _run(self, cmd: list[str]) -> None:
        subprocess.run(self.as_user + cmd, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        try:
            self._run([self.pg_ctl, "-D", self.data, "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_url():
    url = os.environ.get("QUIMBI_TEST_POSTGRES_URL")
    server = None
    if not url:
        try:
            server = ThrowawayPostgres()
            url = server.url
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            message = f"PostgreSQL tests need QUIMBI_TEST_POSTGRES_URL or PostgreSQL binaries: {exc}"
            if REQUIRE_PG:
                pytest.fail(message + " (QUIMBI_REQUIRE_POSTGRES=1)")
            pytest.skip(message)
    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        if server is None:  # a throwaway server is this worker's alone: no database of its own needed in it
            url = _worker_database(url)
    except sa.exc.OperationalError as exc:
        message = f"PostgreSQL at QUIMBI_TEST_POSTGRES_URL is not reachable: {exc}"
        if REQUIRE_PG:
            pytest.fail(message)
        pytest.skip(message)
    except sa.exc.ProgrammingError as exc:
        pytest.fail(f"a parallel test run (pytest -n) needs a database per worker, and creating one failed: {exc.orig}")
    yield url
    if server:
        server.stop()


def _worker_database(url: str) -> str:
    """Under `pytest -n N` (pytest-xdist, as `make test` runs) each worker gets a database of its own beside the given
    one (quimbi_ci -> quimbi_ci_gw0, created when missing): the warehouse's schema is fixed, and two workers resetting
    it in one database would wipe each other's tables. Without xdist, the URL as given."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    base = sa.engine.make_url(url)
    name = f"{base.database or 'postgres'}_{worker}"
    engine = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if not conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # name: the given database's and gwN, not user input
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def _reset_pg(url: str) -> None:
    drop_postgres_schema(url)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'warehouse.sqlite'}"


@pytest.fixture
def pg_url(postgres_url) -> str:
    _reset_pg(postgres_url)
    return postgres_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def warehouse_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    url = request.getfixturevalue("postgres_url")
    _reset_pg(url)
    return url


@pytest.fixture
def warehouse(warehouse_url):
    wh = Warehouse(warehouse_url)
    yield wh
    wh.dispose()


def orders_frame(rows: list[dict]) -> pd.DataFrame:
    """A small raw orders frame from dicts (tests' hand-written cases)."""
    return pd.DataFrame(rows)
