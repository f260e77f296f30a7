#!/usr/bin/env python3
"""Gate data fetch (ticket + every comment) per tracker adapter, against a local fake server.

    python benchmarks/tracker_gate_check.py [--comments 500] [--latency 0.02] [--runs 5]

Each fake answers with its API's real payload shapes and page sizes (Jira/GitHub/GitLab 100 per
page, Linear 250, Redmine all journals at once) and sleeps `latency` seconds per request.
Prints requests and wall time per adapter; the goal is at most 7 requests and 0.3 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit" / "trackers")]

from tracker_cases import SPECS, case  # noqa: E402

GOAL_REQUESTS, GOAL_SECONDS = 7, 0.3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comments", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    print(f"gate data fetch: {args.comments} comments, {args.latency * 1000:.0f} ms per request, "
          f"median of {args.runs} runs")
    print(f"{'adapter':<12} {'requests':>8} {'wall s':>8} {'best s':>8}  goal")
    ok = True
    for kind in SPECS:
        with case(kind, n_comments=args.comments, latency=args.latency, sockets=True) as c:
            times, requests = [], 0
            for _ in range(args.runs):
                before = len(c.server.log)
                started = time.perf_counter()
                ticket, comments = c.tracker.gate_data(c.ref)
                times.append(time.perf_counter() - started)
                requests = len(c.server.log) - before
                assert len(comments) == args.comments, (kind, len(comments))
            wall = statistics.median(times)
            good = requests <= GOAL_REQUESTS and wall <= GOAL_SECONDS
            ok &= good
            print(f"{kind:<12} {requests:>8} {wall:>8.3f} {min(times):>8.3f}  {'ok' if good else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    code = main()
    import tracker_fakes  # noqa: E402
    if tracker_fakes.BUGS:  # figures taken while a fake answered 500 for its own bug are not figures
        print("a fake tracker raised:", *tracker_fakes.BUGS[:3], sep="\n  ", file=sys.stderr)
        code = 2
    sys.exit(code)
