"""Two replicas on one PostgreSQL against one replica on SQLite: 100 concurrent `/deploy` requests.

    python benchmarks/replicas.py [--requests 100] [--skip-baseline]

Starts a throwaway PostgreSQL on 127.0.0.1 (tests/fakes/postgres.py: Debian's postgresql
package), then real `deploybot run --http` processes (tests/integration/replicas_harness.py:
fake Slack Web API, fake `docker compose`, the local tracker in the store). Each request is a
signed `/deploy TICKET web@vN --dry-run` for a ticket of its own that passes the checklist, so
every one is a full pipeline run (checklist, events, outbox, Slack thread) on the shared store.
The requests go out at once from two load processes, half to each replica (the baseline: all
to its one replica), each on its own connection. Printed, side by side:

- ack latency p50/p99/max (Slack needs the ack within 3 s) and non-200 answers;
- duplicates: tickets with more than one deployment (goal 0);
- lost rows: acked requests whose ticket has no deployment once every deployment has finished
  (goal 0);
- leader takeover: `kill -9` of the replica whose /healthz says `"leader": true`, then the time
  until another replica says it is the leader (needs the leadership of issue 12; "n/a" without).

Exit status 1 when a goal is missed (an ack over 3 s, a non-200, a duplicate, a lost row, a
takeover over 15 s). Needs no Slack, no Docker and no network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "integration"),
                str(ROOT / "benchmarks")]

from fakes.slack_harness import SECRET  # noqa: E402
from fakes.waiting import wait_until  # noqa: E402
from replicas_harness import Replicas  # noqa: E402
from slack_ack import fire_all, percentile  # noqa: E402

SLACK_LIMIT_S, TAKEOVER_GOAL_S = 3.0, 15.0
FINISH_TIMEOUT = 600.0


@dataclass
class Figures:
    setup: str
    requests: int
    latencies: list[float]
    non_200: int
    duplicates: int
    lost: int
    finished_s: float
    takeover_s: float | None = None

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    @property
    def over_limit(self) -> int:
        return sum(ms > SLACK_LIMIT_S * 1000 for ms in self.latencies)

    def ok(self) -> bool:
        return (self.over_limit == 0 and self.non_200 == 0 and self.duplicates == 0
                and self.lost == 0 and (self.takeover_s is None
                                        or self.takeover_s < TAKEOVER_GOAL_S))


def run_setup(setup: str, folder: Path, db: str, replica_count: int, requests: int,
              env: dict[str, str]) -> Figures:
    # Replicas on one PostgreSQL name machines of their own: liveness by heartbeat, as in a
    # cluster.
    with Replicas.create(folder, db, extra_env=env, own_hosts=replica_count > 1) as rs:
        replicas = rs.start(replica_count)
        tickets = [rs.ready_ticket(f"benchmark {i}") for i in range(requests)]
        # Round robin over the replicas, one load process per replica, all released together.
        per_replica: list[list[bytes]] = [[] for _ in replicas]
        ticket_of: list[list[str]] = [[] for _ in replicas]
        for i, ticket in enumerate(tickets):
            k = i % len(replicas)
            per_replica[k].append(rs.sender(replicas[k]).command_body(
                f"{ticket} web@v{i} --dry-run", user=f"U0USER{i}"))
            ticket_of[k].append(ticket)
        ctx = multiprocessing.get_context("spawn")
        started = time.monotonic()
        with ctx.Pool(len(replicas)) as pool:
            waiting = [pool.apply_async(fire_all, (r.events_url, SECRET, bodies))
                       for r, bodies in zip(replicas, per_replica)]
            results = [w.get(timeout=120) for w in waiting]
        latencies = [ms for lat, _, _ in results for ms in lat]
        statuses = [s for _, st, _ in results for s in st]
        acked = {t for (_, st, _), ts in zip(results, ticket_of) for s, t in zip(st, ts)
                 if s == 200}

        def all_finished():
            rows = rs.store.deployments(limit=requests * 3)
            return rows if len(rows) >= len(acked) and all(d.status.terminal
                                                             for d in rows) else None
        rows = rs.wait_for(all_finished, FINISH_TIMEOUT, "every deployment to finish")
        finished_s = time.monotonic() - started
        per_ticket: dict[str, int] = {}
        for d in rows:
            per_ticket[d.ticket_id] = per_ticket.get(d.ticket_id, 0) + 1
        figures = Figures(setup, requests, latencies, sum(s != 200 for s in statuses),
                          sum(n > 1 for n in per_ticket.values()),
                          sum(t not in per_ticket for t in acked), finished_s)
        if replica_count > 1:
            figures.takeover_s = takeover(rs)
        return figures


def takeover(rs: Replicas) -> float | None:
    """kill -9 the leader; seconds until another replica's /healthz says it leads. None when
    /healthz does not say who leads (a build without leadership)."""
    def leader():
        for r in rs.alive():
            health = r.healthz() or {}
            if health.get("leader") is True:
                return r
        return None

    if "leader" not in (rs.replicas[0].healthz() or {}):
        return None
    old = rs.wait_for(leader, 30, "a leader")
    old.kill9()
    killed = time.monotonic()
    wait_until(lambda: (lambda r: r is not None and r is not old)(leader()), 60,
               "another replica to lead", every=0.05)
    return time.monotonic() - killed


def start_postgres():
    from fakes.postgres import PostgresServer, make_base_dir

    return PostgresServer(make_base_dir()).start()


def table(rows: list[Figures]) -> str:
    def takeover_text(f: Figures) -> str:
        return "-" if f.setup.startswith("1 ") else ("n/a" if f.takeover_s is None
                                                     else f"{f.takeover_s:.1f} s")
    lines = [("setup", "ack p50", "ack p99", "max", f"> {SLACK_LIMIT_S:.0f} s", "non-200",
              "duplicates", "lost", "all done", "takeover")]
    for f in rows:
        lines.append((f.setup, f"{f.p50:.0f} ms", f"{f.p99:.0f} ms", f"{max(f.latencies):.0f} ms",
                      str(f.over_limit), str(f.non_200), str(f.duplicates), str(f.lost),
                      f"{f.finished_s:.1f} s", takeover_text(f)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--skip-baseline", action="store_true",
                        help="only the two replicas on PostgreSQL")
    args = parser.parse_args(argv)
    # The shipped defaults, so the takeover figure is what an installation gets.
    env = {"DEPLOYBOT_LEADER_POLL_SECONDS": "5", "DEPLOYBOT_REPLICA_STALE_SECONDS": "15"}
    rows = []
    server = start_postgres()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server.create_database("bench_replicas")
            rows.append(run_setup("2 replicas, PostgreSQL", Path(tmp) / "pg",
                                  server.dsn("bench_replicas"), 2, args.requests, env))
            if not args.skip_baseline:
                rows.append(run_setup("1 replica, SQLite", Path(tmp) / "sqlite",
                                      str(Path(tmp) / "sqlite.db"), 1, args.requests, env))
    finally:
        server.stop()
    print(f"{args.requests} concurrent signed `/deploy TICKET web@vN --dry-run` over HTTP "
          f"(127.0.0.1), one ticket each; `deploybot run --http` processes")
    print(table(rows))
    ok = all(f.ok() for f in rows)
    print(f"goals: acks under {SLACK_LIMIT_S:.0f} s, no non-200, 0 duplicates, 0 lost rows, "
          f"takeover under {TAKEOVER_GOAL_S:.0f} s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
