"""Slack within its limits: 10 concurrent deployments against a Web API that answers 429.

    python benchmarks/slack_limits.py [--deployments 10] [--storm 0] [--patience 120]
                                      [--baseline-rev 521828a]

Serves the Bolt app on 127.0.0.1 (HTTP, signed /deploy requests) against the fake Slack Web
API from tests/fakes with Slack's documented limits enforced (chat.update 50 per minute
workspace-wide, chat.postMessage about 1 per second per channel; over them HTTP 429 with
Retry-After). The deployments are real pipeline runs on in-memory backends, each service with
its own lock, so all of them run at once. For each run it prints the Web API calls made, the
429s received, how long the deployments took, and the figure that matters: seconds from the
last deployment finishing until every message (root, checklist, final record) shows the final
state (goal < 10 s). Two runs side by side: deploybot now, and the baseline, the Slack reporter
of --baseline-rev (today's behaviour: a call per render, slack_sdk's RateLimitErrorRetryHandler
sleeping inside the call). Real time (a benchmark, not a test); needs nothing beyond 127.0.0.1.
Exit status 1 when the goal is missed by deploybot now.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler  # noqa: E402

from fakes.slack_api import FakeLimits, FakeSlack  # noqa: E402
from fakes.slack_harness import deploy_all, fleet, running_bot, stale_messages  # noqa: E402

GOAL_S = 10.0


def baseline_reporter(rev: str):
    """The SlackReporter of `rev`, loaded from git as it was: a factory for SlackFrontEnd."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:handlers/slack_reporter.py"],
                            capture_output=True, text=True, check=True, timeout=30).stdout
    spec = importlib.util.spec_from_loader("baseline_slack_reporter", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:handlers/slack_reporter.py", "exec"), module.__dict__)

    class Baseline(module.SlackReporter):
        def __init__(self, client, *args, **kwargs):
            # as web_client() configured it then: the retry handler sleeps inside the call
            client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=2))
            super().__init__(client, *args, **kwargs)

        def start_thread(self, d, channel):  # then: a failed root post went unnoticed
            return self.open_thread(d, channel)

    return Baseline


def run(label: str, count: int, storm: float, patience: float, **extra) -> dict:
    config, _, edges = fleet(count)
    slack = FakeSlack(limits=FakeLimits())
    with tempfile.TemporaryDirectory() as tmp, \
            running_bot(config, Path(tmp) / "deploybot.db", slack=slack, workers=count,
                        **edges, **extra) as bot:
        started = time.monotonic()
        ids = deploy_all(bot, [f"svc{i}" for i in range(count)])
        if storm:
            slack.storm(storm)
        last_finished = None
        converged = None
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if last_finished is None and all(bot.store.deployment(i).status.terminal
                                             for i in ids):
                last_finished = time.monotonic()
            if last_finished is not None and not stale_messages(bot, ids):
                converged = time.monotonic()
                break
            time.sleep(0.05)
        stale = stale_messages(bot, ids)
        statuses = sorted({bot.store.deployment(i).status.value for i in ids})
        calls = len(slack.calls)
        limited = slack.ratelimited
    return {"label": label, "calls": calls, "429s": limited, "statuses": statuses,
            "deploy_s": (last_finished - started) if last_finished else None,
            "converge_s": (converged - last_finished) if converged and last_finished else None,
            "total_s": (converged - started) if converged else None,
            "stale": stale}


def show(r: dict, patience: float) -> str:
    deploy = f"{r['deploy_s']:.1f} s" if r["deploy_s"] is not None else f"> {patience:.0f} s"
    if r["converge_s"] is not None:
        converge = f"{r['converge_s']:.1f} s"
    else:
        converge = f"not within {patience:.0f} s ({len(r['stale'])} stale: " \
                   f"{', '.join(r['stale'][:4])}{'…' if len(r['stale']) > 4 else ''})"
    total = f"{r['total_s']:.1f} s" if r["total_s"] is not None else "-"
    return (f"{r['label']:<10} calls {r['calls']:>4}  429s {r['429s']:>4}  "
            f"deployments {'/'.join(r['statuses'])} in {deploy}  "
            f"final state shown {converge} after the last finished "
            f"({total} after the requests)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--deployments", type=int, default=10)
    parser.add_argument("--storm", type=float, default=0.0,
                        help="seconds of 429 to everything right after the requests")
    parser.add_argument("--patience", type=float, default=120.0,
                        help="seconds to wait for the messages before giving up on a run")
    parser.add_argument("--baseline-rev", default="521828a",
                        help="git revision whose Slack reporter is the baseline")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)

    print(f"{args.deployments} concurrent deployments to staging, fake Slack Web API with "
          f"limits (429 + Retry-After){f', a {args.storm:g} s 429 storm' if args.storm else ''}")
    now = run("now", args.deployments, args.storm, args.patience)
    print(show(now, args.patience), flush=True)
    if not args.no_baseline:
        base = run("baseline", args.deployments, args.storm, args.patience,
                   reporter_factory=baseline_reporter(args.baseline_rev))
        print(show(base, args.patience))
    ok = now["converge_s"] is not None and now["converge_s"] < GOAL_S
    print(f"goal: every message final within {GOAL_S:.0f} s of the last deployment finishing: "
          f"{'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
