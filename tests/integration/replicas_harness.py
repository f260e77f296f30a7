"""Several `deploybot run --http` processes on one store: the harness of the replica tests and of
benchmarks/replicas.py.

Everything a replica talks to runs in the test process on 127.0.0.1 and is shared by all
replicas, as in production: the fake Slack Web API (each replica gets SLACK_API_URL), the
deployed service's health and smoke endpoints (FakeService), and the store (DEPLOYBOT_DB: a
PostgreSQL DSN, or a SQLite path for the single-replica baseline). The tracker is the embedded
one (`tracker: local`, tables in that same store). The backend is `kind: compose` with a fake
`docker compose` (FakeCompose): the real ComposeBackend code runs, no Docker engine is needed,
and a test can hold `compose up` to catch a deployment in the middle of its rollout.

Replicas are started and stopped by their own PID (SIGTERM, or SIGKILL for `kill -9` tests);
each one's output goes to a log file that failure messages quote.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from fakes.slack_api import FakeSlack, SlackRequests
from fakes.slack_harness import PEOPLE, SECRET
from fakes.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BOT_TOKEN = "xoxb-test"
START_TIMEOUT = 60.0  # a cold interpreter on a busy 2-core machine imports Bolt slowly


# -- the deployed service: health and smoke endpoints ------------------------------------------

class FakeService:
    """`/health` 200, `/api/ping` "pong" on 127.0.0.1 (no detailed health: 404)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/health":
                    status, body = 200, b'{"status": "ok"}'
                elif self.path == "/api/ping":
                    status, body = 200, b"pong"
                else:
                    status, body = 404, b"not found"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


# -- the backend: a fake `docker compose` -------------------------------------------------------

_COMPOSE_SCRIPT = '''\
#!{python}
"""Answers like docker compose v2 for deploybot's ComposeBackend; state in {state}."""
import json, os, sys, time
from pathlib import Path

STATE = Path({state!r})
args = sys.argv[1:]
with open(STATE / "calls.log", "a") as log:
    log.write(" ".join(args) + "\\n")
if args[:2] == ["version", "--short"]:
    print("2.40.3"); sys.exit(0)
if "deploybot-no-such-command" in args:
    print("unknown command", file=sys.stderr); sys.exit(1)
project, files, rest, i = "default", [], [], 0
while i < len(args):
    if args[i] in ("-p", "-f", "--ansi", "--progress", "--env-file"):
        if args[i] == "-p":
            project = args[i + 1]
        elif args[i] == "-f":
            files.append(args[i + 1])
        i += 2
    else:
        rest.append(args[i]); i += 1
ps = STATE / (project + ".json")
command = rest[0] if rest else ""
if command == "config":
    if "--services" in rest:
        print("web")
    sys.exit(0)
if command == "pull":
    sys.exit(0)
if command == "up":
    hold = STATE / (project + ".hold")
    if hold.exists():
        (STATE / (project + ".holding")).write_text(str(os.getpid()))
        deadline = time.monotonic() + 600
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    import yaml
    web = yaml.safe_load(Path(files[-1]).read_text())["services"]["web"]
    labels = ",".join(k + "=" + str(v) for k, v in sorted(web.get("labels", {{}}).items()))
    row = {{"Name": project + "-web-1", "Service": "web", "State": "running",
            "Health": "healthy", "Image": web["image"], "ExitCode": 0, "Labels": labels}}
    tmp = ps.with_name(ps.name + ".tmp" + str(os.getpid()))
    tmp.write_text(json.dumps(row) + "\\n")
    tmp.replace(ps)
    print(" Container " + project + "-web-1  Started"); sys.exit(0)
if command == "ps":
    print(ps.read_text() if ps.exists() else ""); sys.exit(0)
if command in ("stop", "rm"):
    if command == "rm" and ps.exists():
        ps.unlink()
    sys.exit(0)
if command == "logs":
    sys.exit(0)
print("fake compose: unsupported " + " ".join(rest), file=sys.stderr)
sys.exit(2)
'''


class FakeCompose:
    """An executable `docker compose` whose "containers" are JSON files in `folder`.

    `hold(project)` makes the next `compose up` of that project wait until `release(project)`
    (a slow rollout, for killing a replica in the middle of it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "calls.log").touch()
        self.binary = folder / "docker-compose"
        self.binary.write_text(_COMPOSE_SCRIPT.format(python=sys.executable, state=str(folder)))
        self.binary.chmod(self.binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self.file = folder / "compose.yml"
        self.file.write_text("services:\n  web:\n    image: demo-web:latest\n")

    def hold(self, project: str) -> None:
        (self.folder / f"{project}.holding").unlink(missing_ok=True)
        (self.folder / f"{project}.hold").touch()

    def holding(self, project: str) -> bool:
        """True once a `compose up` of the project waits on the hold."""
        return (self.folder / f"{project}.holding").exists()

    def release(self, project: str) -> None:
        (self.folder / f"{project}.hold").unlink(missing_ok=True)

    def release_all(self) -> None:
        """No `compose up` stays held (one a killed replica left behind ends by itself)."""
        for hold in self.folder.glob("*.hold"):
            hold.unlink(missing_ok=True)

    def running(self, project: str) -> str | None:
        """The image the project's web "container" runs, None without one."""
        ps = self.folder / f"{project}.json"
        return json.loads(ps.read_text())["Image"] if ps.exists() else None

    def calls(self) -> list[str]:
        return (self.folder / "calls.log").read_text().splitlines()


# -- the config --------------------------------------------------------------------------------

def replicas_config(folder: Path, compose: FakeCompose, service: FakeService, *,
                    verify_timeout: float = 5) -> Path:
    """deploybot.yaml: the local tracker; staging (no approval) and production (bob approves);
    service web deployed by the fake compose, verified against FakeService."""
    web = {
        "image": "demo-web",
        "backend": {"kind": "compose", "file": str(compose.file), "binary": [str(compose.binary)],
                    "pull": "missing", "timeout": 60},
        "health": {"url": f"{service.base}/health", "detailed_path": None},
        "smoke": [{"url": f"{service.base}/api/ping", "contains": "pong"}],
        "verify": {"timeout": verify_timeout, "interval": 0.2},
    }
    data = {
        "channel": "#standup",
        "tracker": {"kind": "local"},
        "default_environment": "staging",
        "environments": {
            "staging": {"approvals_required": 0},
            "production": {"production": True, "approvals_required": 1, "approvers": ["bob"]},
        },
        "services": {"web": web},
        "people": PEOPLE,
    }
    path = folder / "deploybot.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- replicas ----------------------------------------------------------------------------------

@dataclass
class Replica:
    name: str
    proc: subprocess.Popen
    log_path: Path
    port: int = 0
    killed: bool = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events_url(self) -> str:
        return f"{self.base}/slack/events"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def healthz(self, timeout: float = 2.0) -> dict | None:
        """/healthz's JSON, None when the replica does not answer."""
        try:
            answer = httpx.get(f"{self.base}/healthz", timeout=timeout)
        except httpx.TransportError:
            return None
        return answer.json() if answer.status_code == 200 else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        """`kill -9`: no shutdown, no cleanup, whatever it was doing stops mid-way."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.killed = True

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Replicas:
    """N replicas of one deploybot on one store. Use as a context manager (`with`)."""

    folder: Path
    db: str  # DEPLOYBOT_DB of every replica
    slack: FakeSlack
    config_path: Path
    compose: FakeCompose
    service: FakeService
    extra_env: dict[str, str] = field(default_factory=dict)
    own_hosts: bool = False  # each replica names a machine of its own (replica-rN)
    replicas: list[Replica] = field(default_factory=list)
    _senders: dict[str, SlackRequests] = field(default_factory=dict)
    _store: Any = None

    @classmethod
    def create(cls, folder: Path, db: str, *, extra_env: dict[str, str] | None = None,
               verify_timeout: float = 5, own_hosts: bool = False) -> "Replicas":
        """`own_hosts`: every replica says it runs on a machine of its own
        (DEPLOYBOT_REPLICA_HOST), so the others can tell whether it lives only by its heartbeat
        in the database, as across machines -- not by this machine's process table."""
        folder.mkdir(parents=True, exist_ok=True)
        slack = FakeSlack().start()
        compose = FakeCompose(folder / "compose")
        service = FakeService()
        config = replicas_config(folder, compose, service, verify_timeout=verify_timeout)
        return cls(folder, db, slack, config, compose, service, dict(extra_env or {}),
                   own_hosts)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("DEPLOYBOT_", "SLACK_"))}
        env.update({"PYTHONPATH": str(ROOT), "DEPLOYBOT_DB": self.db,
                    "DEPLOYBOT_CONFIG": str(self.config_path),
                    "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SECRET,
                    "SLACK_API_URL": self.slack.api_url, "DEPLOYBOT_LOG_LEVEL": "INFO",
                    "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        return env

    def start(self, count: int = 1, *, socket_mode: bool = False) -> list[Replica]:
        """Start `count` more replicas at once; each is ready (serving) when this returns.
        `socket_mode`: `deploybot run` in Socket Mode (SLACK_APP_TOKEN in extra_env, the fake
        Slack's socket_url set); its port is then the one of /healthz /readyz /metrics."""
        started = []
        for _ in range(count):
            name = f"r{len(self.replicas) + 1}"
            log_path = self.folder / f"{name}.log"
            argv = [sys.executable, "-m", "handlers.cli", "--config", str(self.config_path),
                    "run", *(["--metrics-host", "127.0.0.1", "--metrics-port", "0"]
                             if socket_mode else ["--http", "--host", "127.0.0.1", "--port", "0"])]
            env = self.env()
            if self.own_hosts:
                env["DEPLOYBOT_REPLICA_HOST"] = f"replica-{name}"
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(
                    argv,
                    cwd=self.folder, env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT)
            replica = Replica(name, proc, log_path)
            self.replicas.append(replica)
            started.append(replica)
        for replica in started:
            replica.port = self._wait_listening(replica)
        return started

    def _wait_listening(self, replica: Replica) -> int:
        """The port from the replica's "deploybot is listening (http://127.0.0.1:PORT/..." line
        (`--port 0`: the OS picked it, so no two replicas race for one)."""
        marker = "deploybot is listening (http://127.0.0.1:"
        socket_marker = "/metrics on http://127.0.0.1:"

        def port() -> int | None:
            if replica.proc.poll() is not None:
                raise AssertionError(f"replica {replica.name} exited with "
                                     f"{replica.proc.returncode}:\n{replica.log()[-4000:]}")
            text = replica.log()
            if "deploybot is listening (Socket Mode" in text and socket_marker in text:
                return int(text.split(socket_marker, 1)[1].split(")", 1)[0])
            if marker not in text:
                return None
            return int(text.split(marker, 1)[1].split("/", 1)[0])

        try:
            return wait_until(port, START_TIMEOUT, f"replica {replica.name} to listen")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def sender(self, replica: Replica) -> SlackRequests:
        """Signed Slack requests to that replica."""
        if replica.name not in self._senders:
            self._senders[replica.name] = SlackRequests(replica.events_url, SECRET,
                                                        hooks_url=self.slack.hooks_url)
        return self._senders[replica.name]

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive()]

    @property
    def store(self):
        """The test's own connection to the replicas' store (to seed tickets and read rows)."""
        if self._store is None:
            from handlers.wiring import open_store

            self._store = open_store(environ={"DEPLOYBOT_DB": self.db})
        return self._store

    def ready_ticket(self, title: str = "Ship v2") -> str:
        """A ticket in the local tracker that passes the checklist (CQ by bob, QA by carol)."""
        from backends.trackers.local import LocalTracker

        tracker = LocalTracker(self.store)
        tid = tracker.create_ticket(title, status="Ready for Production")
        tracker.add_comment(tid, "CQ approved", author="bob")
        tracker.add_comment(tid, "QA PASS", author="carol")
        return tid

    def leader(self) -> Replica | None:
        """The live replica whose /healthz says `"leader": true` (None: none says so now)."""
        leaders = [r for r in self.alive() if (r.healthz() or {}).get("leader") is True]
        assert len(leaders) <= 1, f"two leaders at once: {[r.name for r in leaders]}"
        return leaders[0] if leaders else None

    def schedule_due(self, ticket: str, version: str, environment: str = "staging"):
        """A scheduled deployment that is due now, stored the way `/deploy … at TIME` stores it
        (chat times have minutes only; this one is due at once): only a leader starts it."""
        from backends.deploy import build_backend
        from bot import config as configuration

        config = configuration.load(str(self.config_path))
        backend = build_backend("web", environment, config.service("web", environment))
        d, _ = self.store.create_deployment(
            ticket_id=ticket, service="web", version=version, environment=environment,
            requested_by="alice", method=backend.method,
            lock_scope=config.lock_scope("web", environment), scheduled_for=self.store.now(),
            one_at_a_time=True, via="test")
        return d

    def logs(self, tail: int = 3000) -> str:
        """Every replica's log tail, for failure messages."""
        calls = "\n".join(self.compose.calls()[-12:])
        return "\n".join(f"--- {r.name} (pid {r.pid}{', killed' if r.killed else ''}) ---\n"
                         f"{r.log()[-tail:]}" for r in self.replicas) + \
            f"\n--- last compose calls ---\n{calls}"

    def wait_for(self, predicate, timeout: float, what: str):
        """wait_until, with every replica's log in the failure message."""
        try:
            return wait_until(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    def close(self) -> None:
        self.compose.release_all()
        for sender in self._senders.values():
            sender.close()
        for replica in self.replicas:
            replica.stop()
        if self._store is not None:
            self._store.close()
        self.service.close()
        self.slack.stop()

    def __enter__(self) -> "Replicas":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def fresh_database(postgres_server, prefix: str = "replicas") -> str:
    """A new empty database on the session's test PostgreSQL; its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    postgres_server.create_database(name)
    return postgres_server.dsn(name)


def project_of(environment: str, service: str = "web") -> str:
    """The compose project ComposeBackend uses by default: SERVICE-ENVIRONMENT."""
    return f"{service}-{environment}"
