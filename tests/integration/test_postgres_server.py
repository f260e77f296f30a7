"""The test PostgreSQL server itself (tests/fakes/postgres.py): databases, templates, errors."""

from __future__ import annotations

import psycopg
import pytest

from fakes.postgres import PostgresServer, PostgresUnavailable, make_base_dir

pytestmark = pytest.mark.integration


def test_databases_from_a_template_carry_its_tables(postgres_server):
    postgres_server.create_database("server_tpl")
    with psycopg.connect(postgres_server.dsn("server_tpl"), autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.execute("INSERT INTO t VALUES ('kept')")
    dsn = postgres_server.create_database("server_copy", template="server_tpl")
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]
            assert conn.info.host == "127.0.0.1"
    finally:
        postgres_server.drop_database("server_copy")
        postgres_server.drop_database("server_tpl")
    with pytest.raises(psycopg.OperationalError, match="server_copy"):
        psycopg.connect(dsn, connect_timeout=5)


def test_missing_binaries_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOYBOT_PG_BIN", str(tmp_path / "nowhere"))
    with pytest.raises(PostgresUnavailable, match="apt-get install postgresql"):
        PostgresServer(tmp_path).start()


def test_a_taken_port_fails_with_the_servers_own_words(postgres_server):
    base = make_base_dir()
    with pytest.raises(PostgresUnavailable) as failed:
        PostgresServer(base, port=postgres_server.port, start_timeout=10).start()
    assert f"did not start on 127.0.0.1:{postgres_server.port}" in str(failed.value)
    # found out by whichever comes first: the other server answering, or ours failing to bind
    assert "another PostgreSQL server" in str(failed.value) or \
        "could not bind" in str(failed.value)
    assert not base.exists()
