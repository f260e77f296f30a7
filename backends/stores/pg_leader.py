"""Leadership among replicas on one PostgreSQL: a session advisory lock on a connection of its
own. The server releases it the moment that session ends -- the process died (kill -9 closes its
socket), or the server dropped the connection -- and the next replica to poll takes it."""

from __future__ import annotations

import logging

import psycopg

log = logging.getLogger("deploybot.leadership")

# One fixed key in PostgreSQL's advisory lock space: "deploybot leader" (not the store's
# transaction lock key, so a leader never waits for writers).
LEADER_KEY = 0x6465706C6F79_01


class PostgresLeadership:
    def __init__(self, dsn: str, *, connect_timeout: float = 5.0) -> None:
        self.dsn, self.connect_timeout = dsn, connect_timeout
        self._conn: psycopg.Connection | None = None
        self._held = False

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(
            self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
            application_name="deploybot-leader",
            # a dead peer (machine gone, cable cut) is noticed in ~20 s, not hours
            keepalives=1, keepalives_idle=5, keepalives_interval=5, keepalives_count=3,
            options="-c statement_timeout=5000")

    def try_lead(self) -> bool:
        try:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._held = False
                self._conn = self._connect()
            if self._held:
                # Still ours while this session lives; a failing round trip means it may not be.
                self._conn.execute("SELECT 1")
                return True
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_KEY]).fetchone()
            self._held = bool(row and row[0])
            return self._held
        except psycopg.Error as exc:
            log.warning("leadership: the database did not answer: %s", type(exc).__name__)
            self._held = False
            self._close()
            return False

    def resign(self) -> None:
        if self._held and self._conn is not None and not self._conn.closed:
            try:
                self._conn.execute("SELECT pg_advisory_unlock(%s)", [LEADER_KEY])
            except psycopg.Error:
                pass  # closing the session below releases it anyway
        self._held = False
        self._close()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None
