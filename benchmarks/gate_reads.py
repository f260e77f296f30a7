#!/usr/bin/env python3
"""What trustworthy gates cost at the tracker: one deployment through the real Pipeline.

    python benchmarks/gate_reads.py [--comments 500] [--latency 0.02]

Per tracker adapter, against its local fake server (real payload shapes, `latency` seconds per
request), with in-memory deploys: the requests and wall time of the tracker reads a deployment
makes — the checklist (deploybot's own account, which also checks its credentials; the ticket;
every comment; the people's accounts, resolved once per process) and the re-check right before
the rollout — for a first deployment in a new process and for a second one in the same process.
Side by side, in the same run, the baseline: the bare ticket + comments fetch the checklist
made before the gates were hardened (`gate_data`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit" / "trackers")]

from tracker_cases import SPECS, case  # noqa: E402

from bot import config as configuration  # noqa: E402
from bot.pipeline import Pipeline  # noqa: E402
from bot.store import Store  # noqa: E402
from tests.fakes.core import (FakeBackend, FakeProbe, InstantClock, RecordingReporter,  # noqa: E402
                              ScriptedApprover)


def pipeline_for(c, tmp: Path, n: int) -> Pipeline:
    app = c.app
    people = {login: {"tracker": app.login_ref(login)} for login in ("carol", "quinn", "alice")}
    cfg = configuration.parse({
        "tracker": {"kind": "local", "rules": {"cq_approval": {"authors": ["carol"]},
                                               "qa_pass": {"authors": ["quinn"]}}},
        # two environments: a staging deploy leaves the ticket's status as it is
        "environments": {"staging": {}, "production": {}},
        "services": {"web": {"image": "web", "health": {"url": "http://127.0.0.1:9/h"}}},
        "people": people,
    })
    backend = FakeBackend(running="v1")
    return Pipeline(config=cfg, store=Store(tmp / f"{c.kind}-{n}.db"), tracker=c.tracker,
                    backend_for=lambda s, e: backend, reporter=RecordingReporter(),
                    approver=ScriptedApprover(), probe=FakeProbe(backend), clock=InstantClock())


def deploy(c, pipeline: Pipeline, version: str) -> tuple[int, float, int, float, str]:
    """(checklist requests, seconds, re-check requests, seconds, outcome) of one deployment."""
    log = c.server.log
    marks: dict[str, tuple[int, float]] = {}
    real_recheck = pipeline.gating.recheck

    def timed_recheck(d):
        marks["recheck"] = (len(log), time.perf_counter())
        out = real_recheck(d)
        marks["done"] = (len(log), time.perf_counter())
        return out

    pipeline.gating.recheck = timed_recheck
    d = pipeline.request_deploy(c.ref, requested_by="alice", target=f"web@{version}")
    start = (len(log), time.perf_counter())
    d = pipeline.run(d.id)
    check = (marks["recheck"][0] - start[0], marks["recheck"][1] - start[1])
    recheck = (marks["done"][0] - marks["recheck"][0], marks["done"][1] - marks["recheck"][1])
    # the record written back after the deploy is not a gate read: left out
    return check[0], check[1], recheck[0], recheck[1], d.status.value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comments", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    args = parser.parse_args()
    print(f"one deployment's tracker reads: {args.comments} comments, "
          f"{args.latency * 1000:.0f} ms per request; requests / seconds")
    print(f"{'adapter':<11} {'baseline':>14} {'checklist 1st':>14} {'re-check':>12} "
          f"{'checklist 2nd':>14} {'re-check':>12}  outcome")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in SPECS:
            with case(kind, n_comments=args.comments, latency=args.latency, sockets=True) as c:
                before = len(c.server.log)
                started = time.perf_counter()
                c.tracker.gate_data(c.ref)
                base = (len(c.server.log) - before, time.perf_counter() - started)
                pipeline = pipeline_for(c, Path(tmp), 1)
                first = deploy(c, pipeline, "v2")
                second = deploy(c, pipeline, "v3")
                cells = [f"{base[0]:>5} / {base[1]:5.2f}"]
                for r in (first, second):
                    cells += [f"{r[0]:>5} / {r[1]:5.2f}", f"{r[2]:>3} / {r[3]:5.2f}"]
                print(f"{kind:<11} {cells[0]:>14} {cells[1]:>14} {cells[2]:>12} "
                      f"{cells[3]:>14} {cells[4]:>12}  {first[4]}, {second[4]}")
    return 0


if __name__ == "__main__":
    code = main()
    import tracker_fakes  # noqa: E402
    if tracker_fakes.BUGS:  # figures taken while a fake answered 500 for its own bug are not figures
        print("a fake tracker raised:", *tracker_fakes.BUGS[:3], sep="\n  ", file=sys.stderr)
        code = 2
    sys.exit(code)
