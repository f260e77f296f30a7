"""What users of a Docker service see during deploys and rollbacks: failed requests, latency,
outage and restore time under a constant load, for the seed's stop/rm/run, deploybot with
published ports, and deploybot behind the proxy (`proxy:`), interleaved in the same run.

A constant open-loop load (benchmarks/loadgen.py, default 50 requests a second, each with a
timeout, from its own process on 127.0.0.1) asks the service's public address for the demo's
/version during:
  (a) deploy   a healthy deploy v1 -> v2;
  (b) bad      a deploy of a version whose /health answers 500, and the way back to v1;
  (c) rollback a manual rollback v2 -> v1 (after the deploy of v2 finished: behind the proxy
               v1 is then kept stopped, so it is started and checked before the switch);
  (d) watch    a deploy of a version that passes its checks but logs errors, rolled back
               automatically by the watch window (3 s; v1 still warm behind the proxy).
The ways (each with its own container and public port, on the same engine):
  seed      the seed's procedure through the Docker SDK: stop (1 s grace), remove, run the new
            image publishing the port, poll /health; (b): then back to v1 the same way; (d): the seed has no watch window,
            so it "decides" as soon as the version is healthy and goes back the same way;
  ports     deploybot, DockerBackend with `ports:`, through the Pipeline (as `deploybot deploy`
            and `deploybot rollback` run it: checklist, lock, verify, record);
  proxy     the same with `proxy:` (HAProxy in front; needs the proxy adapter and the staged
            rollout: left out with a note when this checkout has no backends/proxy/haproxy.py).
Every round runs (a), (c), (b), (d) in turn and, for each, every way, the order rotated each
round. Before the rounds, the proxy way begins as a `ports:` service on the same public port and
its first deploy with `proxy:` is measured once: (m), the migration's one short gap (the old
container gives up the port before the proxy can take it).

Figures per cell: requests sent and failed (non-2xx or no answer, summed over the rounds),
p50/p99 latency of the 2xx answers (all rounds), the longest outage (longest stretch of
consecutive failed requests, worst round), and "restore": from the rollback decision to the
first request answered by v1 (median and worst round). The decision: for (c) the rollback call;
for (b) and (d) the seed's health poll giving up (3 failing probes in a row, like deploybot's
`failing_probes: 3`) or being healthy, and deploybot's automatic-rollback alert. "bad": 2xx
answers that came from the failing version. "v1 never left": no rollback was needed, no request
reached the failing version (it was discarded before the switch). Goals through the proxy: 0 failed requests; restore under 0.1 s.

    eval "$(scripts/dockerd.sh start)"; scripts/build-base-image.sh
    python benchmarks/zero_downtime.py [--rounds 3] [--rps 50] [--ways seed,ports,proxy]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import docker
import docker.errors
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import (Load, Sample, answered_by, failure_kinds,  # noqa: E402
                                percentile, restore_time, summarize)

GRACE = 1  # s, docker stop's grace on every side (the demo's PID 1 ignores SIGTERM)
INTERVAL = 0.5  # s between health probes, every side
FAILING_PROBES = 3  # 5xx in a row that decide a failure, every side
HEALTH_TIMEOUT = 20.0
BAD = "v-bad"  # /health answers 500
NOISY = "v-errors"  # healthy, but every request logs an ERROR line: the watch window trips
WATCH_WINDOW = 3.0  # s; the rules that cannot misjudge a loaded 2-core machine (latency off)
SCENARIOS = {"deploy": "(a) deploy v1 -> v2", "bad": f"(b) deploy {BAD} (health 500)",
             "rollback": "(c) rollback v2 -> v1 (after)",
             "watch": f"(d) {NOISY} rolled back in watch",
             "migrate": "(m) ports: -> proxy: v1->v2, once"}
LEFT_FOR = {"bad": BAD, "rollback": "v2", "watch": NOISY}  # what v1 was left for
RUN_ORDER = ("deploy", "rollback", "bad", "watch")  # each ends as the next one begins
PEOPLE = {name: {"tracker": name} for name in ("alice", "bob", "carol")}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str, *, give_up_after: int = FAILING_PROBES) -> tuple[bool, float]:
    """Poll `url` every INTERVAL: (True, when) at the first 200, (False, when) after
    `give_up_after` 5xx in a row; no answer (starting) is waited for until HEALTH_TIMEOUT."""
    deadline = time.monotonic() + HEALTH_TIMEOUT
    failing = 0
    with httpx.Client(timeout=2, trust_env=False) as client:
        while time.monotonic() < deadline:
            try:
                code = client.get(url).status_code
            except httpx.HTTPError:
                code = 0
            if code == 200:
                return True, time.monotonic()
            failing = failing + 1 if code >= 500 else 0
            if failing >= give_up_after:
                return False, time.monotonic()
            time.sleep(INTERVAL)
    return False, time.monotonic()


# -- the ways -----------------------------------------------------------------------------------------

class Seed:
    """The seed's procedure: stop -t 1, rm, run -p, then poll /health."""

    label = "seed stop/rm/run"

    def __init__(self, client: docker.DockerClient, repo: str, prefix: str) -> None:
        self.client, self.repo = client, repo
        self.name = f"{prefix}-seed"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def _replace(self, tag: str) -> None:
        try:
            old = self.client.containers.get(self.name)
            old.stop(timeout=GRACE)
            old.remove()
        except docker.errors.NotFound:
            pass
        self.client.containers.run(f"{self.repo}:{tag}", name=self.name, detach=True,
                                   restart_policy={"Name": "unless-stopped"},
                                   ports={"8080/tcp": ("127.0.0.1", self.port)})

    def start(self) -> None:
        self._to("v1")

    def _to(self, tag: str) -> None:
        self._replace(tag)
        ok, _ = health(f"{self.base}/health")
        if not ok:
            raise SystemExit(f"seed: {tag} did not become healthy")

    def deploy(self) -> float | None:
        self._to("v2")
        return None

    def bad(self) -> float | None:
        self._replace(BAD)
        ok, decided = health(f"{self.base}/health")
        if ok:
            raise SystemExit(f"seed: {BAD} passed /health")
        self._to("v1")
        return decided

    def watch(self) -> float | None:
        self._to(NOISY)
        decided = time.monotonic()
        self._to("v1")
        return decided

    def rollback(self) -> float | None:
        decided = time.monotonic()
        self._to("v1")
        return decided

    def containers(self) -> list[str]:
        return [self.name]


class Recorder:
    """A Reporter keeping when the automatic rollback was decided (its alert)."""

    def __init__(self) -> None:
        self.alerts: list[tuple[float, str]] = []

    def deployment_started(self, d): ...
    def checklist_updated(self, d, checks): ...
    def gate_requested(self, d, gate): ...
    def gate_decided(self, d, gate): ...
    def step(self, d, message): ...
    def blocked(self, d, blockers): ...
    def finished(self, d, record): ...

    def alert(self, d, message: str) -> None:
        self.alerts.append((time.monotonic(), message))

    def decided_since(self, since: float) -> float | None:
        times = [t for t, m in self.alerts if t >= since and "rollback" in m]
        return times[0] if times else None


class _NoGates:
    def request(self, deployment, gate):
        return None


class Bot:
    """deploybot through the Pipeline (handlers.wiring.build_pipeline), local tracker."""

    def __init__(self, label: str, backend: dict, base: str, folder: Path, repo: str) -> None:
        from backends.trackers.local import LocalTracker
        from bot import config as config_mod
        from bot.store import Store
        from handlers.wiring import build_pipeline

        self.label, self.base = label, base
        self.name = backend["container_name"]
        folder.mkdir(parents=True, exist_ok=True)  # a migration: the same store, a new config
        cfg = config_mod.parse({
            "people": PEOPLE, "tracker": {"kind": "local"}, "environments": {"staging": {}},
            "services": {"web": {
                "image": repo, "backend": backend,
                "health": {"url": f"{base}/health", "detailed_path": "/health/detailed"},
                "smoke": [{"url": f"{base}/api/ping", "contains": "pong"}],
                "verify": {"timeout": HEALTH_TIMEOUT, "interval": INTERVAL,
                           "failing_probes": FAILING_PROBES},
                "watch": {"window": WATCH_WINDOW, "interval": INTERVAL, "rules": {
                    "latency_factor": None, "error_rate_points": None}}}}}, label)
        self.store = Store(folder / "deploybot.db")
        self.tracker = LocalTracker(self.store)
        self.reporter = Recorder()
        self.pipeline = build_pipeline(cfg, self.store, reporter=self.reporter,
                                       approver=_NoGates(), tracker=self.tracker,
                                       environ=dict(os.environ))

    def _deploy(self, tag: str, *want: str):
        tid = self.tracker.create_ticket(f"release {tag}", status="Ready for Production")
        self.tracker.add_comment(tid, "CQ approved", author="bob")
        self.tracker.add_comment(tid, "QA PASS", author="carol")
        d = self.pipeline.request_deploy(tid, requested_by="alice", target=f"web@{tag}")
        d = self.pipeline.run(d.id)
        if d.status.value not in want:
            raise SystemExit(f"{self.label}: deploy of {tag} ended {d.status.value}, not "
                             f"{' or '.join(want)}: {d.failure}")

    def start(self) -> None:
        self._deploy("v1", "succeeded")

    def deploy(self) -> float | None:
        self._deploy("v2", "succeeded")
        return None

    def bad(self) -> float | None:
        since = time.monotonic()
        # behind the proxy it fails before the switch: nothing to roll back
        self._deploy(BAD, "rolled_back", "failed")
        return self.reporter.decided_since(since)

    def watch(self) -> float | None:
        since = time.monotonic()
        self._deploy(NOISY, "rolled_back")
        return self.reporter.decided_since(since)

    def rollback(self) -> float | None:
        decided = time.monotonic()
        d = self.pipeline.request_rollback(requested_by="alice", service="web")
        d = self.pipeline.run(d.id)
        if d.status.value != "succeeded" or d.version != "v1":
            raise SystemExit(f"{self.label}: rollback ended {d.status.value} at {d.version}: "
                             f"{d.failure}")
        return decided


# -- measuring ----------------------------------------------------------------------------------------

@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)
    failed: int = 0
    sent: int = 0
    outages: list[float] = field(default_factory=list)
    restores: list[float] = field(default_factory=list)
    bad_answers: int = 0
    never_left: int = 0  # rounds in which v1 served throughout (nothing to restore)
    undecided: int = 0  # rounds in which v1 was left and no rollback was decided
    failures: Counter = field(default_factory=Counter)  # "ConnectError", "HTTP 503", ...


def measure(way, scenario: str, cell: Cell, rps: float, timeout: float, lead: float,
            tail: float) -> None:
    action: Callable[[], float | None] = getattr(way, scenario)
    with Load(f"{way.base}/version", rps=rps, timeout=timeout) as load:
        time.sleep(lead)  # the steady state before, in the same figures
        decided = action()
        time.sleep(tail)
    s = summarize(load.samples, load.period)
    cell.samples += load.samples
    cell.sent += s.sent
    cell.failed += s.failed
    cell.outages.append(s.longest_outage)
    cell.failures.update(failure_kinds(load.samples))
    if scenario not in LEFT_FOR:
        return
    left_for = LEFT_FOR[scenario]
    if scenario != "rollback":
        cell.bad_answers += answered_by(load.samples, left_for)
    if decided is None:
        # no rollback: fine when the failing version never answered (discarded before the
        # switch); the failed column still counts what the busy machine did not answer
        if answered_by(load.samples, left_for):
            cell.undecided += 1
        else:
            cell.never_left += 1
    else:
        restored = restore_time(load.samples, decided, "v1")
        if restored is None:
            raise SystemExit(f"{way.label}: {scenario}: v1 never answered after the decision")
        cell.restores.append(restored)


def ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def report(cells: dict[tuple[str, str], Cell], labels: dict[str, str]) -> None:
    head = (f"{'scenario':<36} {'way':<22} {'sent':>6} {'failed':>6} {'p50 ms':>7} "
            f"{'p99 ms':>7} {'outage s':>8} {'restore ms med/max':>19} {'bad':>4}")
    print(head)
    print("-" * len(head))
    for scenario, title in SCENARIOS.items():
        for key, label in labels.items():
            cell = cells.get((scenario, key))
            if cell is None:
                continue
            good = [s.latency for s in cell.samples if s.ok and s.latency is not None]
            if cell.restores:
                restore = f"{ms(statistics.median(cell.restores))}/{ms(max(cell.restores))}"
            elif cell.undecided:
                restore = "no rollback"
            elif cell.never_left:
                restore = "v1 never left"
            else:
                restore = "-"
            bad = str(cell.bad_answers) if scenario in ("bad", "watch") else "-"
            print(f"{title:<36} {label:<22} {cell.sent:>6} {cell.failed:>6} "
                  f"{ms(percentile(good, 50)):>7} {ms(percentile(good, 99)):>7} "
                  f"{max(cell.outages):>8.2f} {restore:>19} {bad:>4}")
            title = ""  # once per scenario
    kinds = [f"{SCENARIOS[sc][:3]} {labels[key]}: " + ", ".join(f"{n} {k}" for k, n in
                                                              cell.failures.most_common())
             for (sc, key), cell in cells.items() if cell.failures]
    if kinds:
        print("failed requests: " + "; ".join(kinds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rps", type=float, default=50.0, help="requests per second (open loop)")
    # 5 s: a request the busy machine answers late (TCP retries a dropped SYN after 1 s, 3 s)
    # shows in p99; "failed" is kept for what a client gives up on.
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="per request phase (connect, read), seconds (default 5)")
    parser.add_argument("--ways", default="seed,ports,proxy",
                        help="comma-separated, from seed, ports, proxy")
    parser.add_argument("--lead", type=float, default=1.0, help="s of load before each action")
    parser.add_argument("--tail", type=float, default=1.0, help="s of load after each action")
    args = parser.parse_args()
    wanted = [w.strip() for w in args.ways.split(",") if w.strip()]
    unknown = set(wanted) - {"seed", "ports", "proxy"}
    if unknown or not wanted:
        parser.error(f"--ways: unknown {sorted(unknown)}; choose from seed, ports, proxy")
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}, "
          f"Python {platform.python_version()}; load {args.rps:g} req/s open loop, timeout "
          f"{args.timeout:g} s, {args.rounds} rounds; stop grace {GRACE} s and health every "
          f"{INTERVAL:g} s ({FAILING_PROBES} failing in a row decide) on every side")
    print("load average before: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    notes: list[str] = []
    if "proxy" in wanted and not (ROOT / "backends/proxy/haproxy.py").exists():
        notes.append("proxy: left out, this checkout has no HAProxy adapter "
                     "(backends/proxy/haproxy.py) yet")
        wanted.remove("proxy")

    client = docker.from_env(timeout=120)
    run_id = uuid.uuid4().hex[:6]
    prefix = f"bench-zd-{run_id}"
    repo = prefix
    for tag, mode in (("v1", "healthy"), ("v2", "healthy"), (BAD, "unhealthy"),
                      (NOISY, "log-errors")):
        client.images.build(path=str(ROOT / "examples" / "demo"), tag=f"{repo}:{tag}",
                            buildargs={"VERSION": tag, "MODE": mode}, rm=True)
    work = Path(tempfile.mkdtemp(prefix="deploybot-zd-"))
    ways: dict[str, object] = {}
    labels: dict[str, str] = {}
    try:
        cells: dict[tuple[str, str], Cell] = {}
        for key in wanted:
            ways[key] = make_way(key, client, repo, prefix, work)
            labels[key] = ways[key].label
            if key == "proxy":  # begins on ports: (v1), moves to proxy: with v2, back to v1
                ways[key].before.start()
                measure(ways[key], "deploy", cells.setdefault(("migrate", key), Cell()),
                        args.rps, args.timeout, args.lead, args.tail)
                ways[key].start()
            else:
                ways[key].start()
        order = list(ways)
        for r in range(args.rounds):
            for scenario in RUN_ORDER:
                shift = r % len(order)
                for key in order[shift:] + order[:shift]:
                    measure(ways[key], scenario, cells.setdefault((scenario, key), Cell()),
                            args.rps, args.timeout, args.lead, args.tail)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    finally:
        cleanup(client, prefix, repo)
    print()
    report(cells, labels)
    for note in notes:
        print(f"note: {note}")
    print("load average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg())
          + f" ({os.cpu_count()} cores: more than that and the figures measure the machine)")
    print("goals through the proxy: 0 failed requests in every scenario; restore < 100 ms")
    return 0


def make_way(key: str, client: docker.DockerClient, repo: str, prefix: str, work: Path):
    if key == "seed":
        return Seed(client, repo, prefix)
    common = {"kind": "docker", "container_name": f"{prefix}-{key}", "stop_timeout": GRACE,
              "pull": "never"}
    if key == "ports":
        port = free_port()
        return Bot("deploybot ports:", {**common, "ports": {"8080": f"127.0.0.1:{port}"}},
                   f"http://127.0.0.1:{port}", work / key, repo)
    port = free_port()
    proxy = {"listen": f"127.0.0.1:{port}", "port": 8080, "run": "container",
             "image": os.environ.get("DEPLOYBOT_PROXY_IMAGE", "deploybot/haproxy:2.6"),
             "container_name": f"{prefix}-haproxy", "dir": str(work / "proxy-dir")}
    way = Bot("deploybot proxy:", {**common, "proxy": proxy}, f"http://127.0.0.1:{port}",
              work / key, repo)
    # the same service as it was before the migration: its port published by the container
    way.before = Bot("deploybot ports:", {**common, "ports": {"8080": f"127.0.0.1:{port}"}},
                     f"http://127.0.0.1:{port}", work / key, repo)
    return way


def cleanup(client: docker.DockerClient, prefix: str, repo: str) -> None:
    for c in client.containers.list(all=True, filters={"name": prefix}):
        try:
            c.remove(force=True)
        except docker.errors.APIError as exc:
            print(f"could not remove {c.name}: {exc}", file=sys.stderr)
    for tag in ("v1", "v2", BAD, NOISY):
        try:
            client.images.remove(f"{repo}:{tag}", force=True)
        except docker.errors.APIError:
            pass


if __name__ == "__main__":
    sys.exit(main())
