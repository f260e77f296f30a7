#!/usr/bin/env python3
"""What one /metrics scrape costs on a big history (the store is read at scrape time).

    python benchmarks/metrics_scrape.py [--deployments 20000] [--checks 8] [--scrapes 20]

Builds a database with that many finished deployments over 10 environments x 20 services (each
with `checks` checklist rows and a gate), 500 outbox items and 50 locks, then times
generate_latest() of the registry `deploybot run` serves: median and worst of `scrapes`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from prometheus_client import generate_latest  # noqa: E402

from bot.metrics import registry_for  # noqa: E402
from bot.store import Store  # noqa: E402

OUTCOMES = ["succeeded"] * 8 + ["failed", "rolled_back", "blocked", "rollback_failed"]


def build(store: Store, deployments: int, checks: int) -> None:
    rng = random.Random(7)
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    rows, check_rows, gate_rows = [], [], []
    for i in range(1, deployments + 1):
        start = t0 + timedelta(minutes=i)
        end = start + timedelta(seconds=rng.randint(5, 3000))
        rows.append({"id": i, "ticket_id": f"T-{i}", "service": f"svc{i % 20}", "version": "v1",
                     "environment": f"env{i % 10}", "requested_by": "alice",
                     "status": rng.choice(OUTCOMES), "kind": "deploy", "dry_run": i % 7 == 0,
                     "failure": "verification failed (x)", "created_at": start.isoformat(),
                     "updated_at": end.isoformat(), "finished_at": end.isoformat()})
        check_rows += [{"deployment_id": i, "name": f"check{c}", "title": "", "position": c,
                        "status": "failed" if rng.random() < 0.05 else "passed", "reason": ""}
                       for c in range(checks)]
        gate_rows.append({"deployment_id": i, "kind": "approval", "prompt": "", "status":
                          "approved", "created_at": start.isoformat(),
                          "decided_at": (start + timedelta(seconds=rng.randint(1, 9000)))
                          .isoformat()})
    with store.transaction() as db:
        db["deployments"].insert_all(rows, batch_size=2000)
        db["checks"].insert_all(check_rows, batch_size=5000)
        db["gates"].insert_all(gate_rows, batch_size=5000)
        db["outbox"].insert_all([{"kind": "comment", "target": f"ticket:{n}", "key": f"k{n}",
                                  "payload": "{}", "state": "pending" if n % 5 else "failed",
                                  "created_at": t0.isoformat(), "next_attempt_at":
                                  t0.isoformat()} for n in range(500)])
        db["locks"].insert_all([{"scope": f"env{n}/svc{n}", "deployment_id": n or None,
                                 "holder": "x", "reason": "", "acquired_at": t0.isoformat()}
                                for n in range(50)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deployments", type=int, default=20000)
    ap.add_argument("--checks", type=int, default=8)
    ap.add_argument("--scrapes", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "deploybot.db")
        build(store, args.deployments, args.checks)
        registry = registry_for(store)
        times, size = [], 0
        for _ in range(args.scrapes):
            started = time.perf_counter()
            size = len(generate_latest(registry))
            times.append(time.perf_counter() - started)
        store.close()
    print(f"{args.deployments} deployments, {args.deployments * args.checks} checks: "
          f"scrape median {statistics.median(times) * 1000:.1f} ms, worst "
          f"{max(times) * 1000:.1f} ms, {size} bytes")


if __name__ == "__main__":
    main()
