"""The Slack front end under test: a config of the test's own, the app served over HTTP on
127.0.0.1 against FakeSlack, and helpers to read the deployment thread."""

from __future__ import annotations

import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bot import config as configuration
from fakes.core import FakeBackend, FakeProbe, InstantClock
from bot.config import Config
from bot.store import Store
from backends.trackers.local import LocalTracker
from fakes.slack_api import FakeSlack, Message, SlackRequests
from handlers import blocks
from handlers.slack_app import SlackFrontEnd, make_http_server, web_client
from handlers.slack_reporter import ThreadRef

SECRET = "test-signing-secret-0123456789"
ALICE, BOB, CAROL, DANA = "U0ALICE", "U0BOB", "U0CAROL", "U0DANA"
# Each person's account on the local tracker is their name.
PEOPLE = {"alice": {"slack": ALICE, "tracker": "alice"}, "bob": {"slack": BOB, "tracker": "bob"},
          "carol": {"slack": CAROL, "tracker": "carol"}, "dana": {"slack": DANA, "tracker": "dana"}}


def slack_config(*, image: str, ports: dict[str, int], prefix: str,
                 approver_groups: list[str] | None = None, verify_timeout: float = 20,
                 services: tuple[str, ...] = ("web",)) -> Config:
    """staging (no approval) and production (one approval by bob), each on its own port;
    `services` alike (only "web" runs containers in the Docker tests)."""
    def service_for(env: str) -> dict:
        port = ports[env]
        return {
            "backend": {"kind": "docker", "container_name": f"{prefix}-{env}",
                        "ports": {"8080": f"127.0.0.1:{port}"}, "stop_timeout": 1,
                        "pull": "never", "restart_policy": "no"},
            "health": {"url": f"http://127.0.0.1:{port}/health"},
            "smoke": [{"url": f"http://127.0.0.1:{port}/api/ping", "contains": "pong"}],
        }

    first = next(iter(ports))
    data = {
        "channel": "#standup",
        "default_environment": "staging",
        "environments": {
            "staging": {"approvals_required": 0},
            "production": {"production": True, "approvals_required": 1, "approvers": ["bob"],
                           "approver_groups": approver_groups or []},
        },
        "services": {name: {"image": image, **service_for(first),
                            "verify": {"timeout": verify_timeout, "interval": 0.3}}
                     for name in services},
        "people": PEOPLE,
        "overrides": {env: {name: service_for(env) for name in services}
                      for env in ports if env != first},
    }
    return configuration.parse(data, "test-slack.yaml")


def ready_ticket(store: Store, title: str = "Ship v2", notes: str | None = None) -> str:
    """A ticket that passes the checklist: CQ by bob, QA by carol, ready for production."""
    tracker = LocalTracker(store)
    tid = tracker.create_ticket(title, status="Ready for Production")
    tracker.add_comment(tid, "CQ approved", author="bob")
    tracker.add_comment(tid, "QA PASS", author="carol")
    if notes:
        tracker.add_comment(tid, f"Deployment notes: {notes}", author="carol")
    return tid


def fleet(count: int) -> tuple[Config, dict[str, FakeBackend], dict]:
    """`count` services on in-memory backends (health always answers), each with its own lock,
    so that they deploy to staging side by side: (config, backends, running_bot edges)."""
    services = tuple(f"svc{i}" for i in range(count))
    backends = {name: FakeBackend(running="v1") for name in services}
    config = slack_config(image="demo-web", prefix="unused", ports={"staging": 9,
                                                                     "production": 9},
                          verify_timeout=1, services=services)
    config.environments["staging"].lock_scope = "service"
    edges = dict(backend_for=lambda s, e: backends[s],
                 probe=FakeProbe(FakeBackend(running="any")), clock=InstantClock())
    return config, backends, edges


def deploy_all(bot: "BotUnderTest", services: list[str],
               unready: frozenset[str] = frozenset()) -> list[int]:
    """A ready ticket per service (no CQ and QA for those `unready`: they are blocked), then
    one `/deploy TICKET SERVICE@v2 to staging` per service, all sent at once; the ids."""
    tickets = [LocalTracker(bot.store).create_ticket(f"ship {name}",
                                                     status="Ready for Production")
               if name in unready else ready_ticket(bot.store, f"ship {name}")
               for name in services]
    barrier = threading.Barrier(len(services))
    answers: list[int] = []

    def send(ticket: str, name: str) -> None:
        barrier.wait()
        answers.append(bot.send.command(f"{ticket} {name}@v2 to staging",
                                        user=ALICE).status_code)

    threads = [threading.Thread(target=send, args=pair) for pair in zip(tickets, services)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [200] * len(services), answers
    return [d.id for d in bot.wait_for_deployments(len(services))]


def shows(slack_message: Message | None, rendered: blocks.Message) -> bool:
    return slack_message is not None and slack_message.text == rendered.text and \
        slack_message.blocks == rendered.blocks


def stale_messages(bot: "BotUnderTest", deployment_ids: list[int]) -> list[str]:
    """The thread messages (root, checklist, final) that do not show the stored state yet."""
    stale = []
    config, store = bot.front.config, bot.store
    for did in deployment_ids:
        d = store.deployment(did)
        ref = ThreadRef.parse(d.thread_ref)
        if ref is None:
            stale.append(f"#{did}: no thread")
            continue
        wanted = {"root": (ref.ts, blocks.root_message(config, d)),
                  "checklist": (ref.parts.get("checklist"),
                                blocks.checklist_message(config, d, store.checks(did))),
                  "final": (ref.parts.get("final"), blocks.final_message(config, d, d.record))}
        stale += [f"#{did}: {name}" for name, (ts, rendered) in wanted.items()
                  if not shows(bot.slack.messages.get(ts or ""), rendered)]
    return stale


@dataclass
class BotUnderTest:
    slack: FakeSlack
    front: SlackFrontEnd
    send: SlackRequests
    store: Store
    url: str
    workers: int = 8

    def settle(self, timeout: float = 30) -> None:
        """Return once every task handed to the front end's workers before this call is done:
        a task on each worker meets at a barrier, and the workers take tasks in order. What a
        request set off after its answer has then happened, with no sleep to guess its length."""
        barrier = threading.Barrier(self.workers + 1, timeout=timeout)
        for _ in range(self.workers):
            self.front.submit(barrier.wait)
        barrier.wait()
        pool = self.front.deploy_executor  # then the deployments those tasks handed over
        if pool is not None:
            barrier = threading.Barrier(pool._max_workers + 1, timeout=timeout)
            for _ in range(pool._max_workers):
                pool.submit(barrier.wait)
            barrier.wait()

    def root_of(self, deployment_id: int) -> Message:
        ref = self.store.deployment(deployment_id).thread_ref
        assert ref, f"deployment #{deployment_id} has no thread"
        return self.slack.messages[ref.split(" ")[0].split(":", 1)[1]]

    def thread_of(self, deployment_id: int) -> list[Message]:
        return self.slack.thread(self.root_of(deployment_id).ts)

    def wait_for_message(self, deployment_id: int, text: str, timeout: float = 30) -> Message:
        def find():
            try:
                return next((m for m in self.thread_of(deployment_id) if text in m.everything),
                            None)
            except (AssertionError, KeyError):
                return None
        return self.slack.wait_for(find, timeout, f"a thread message with {text!r}")

    def wait_for_deployments(self, count: int, timeout: float = 15):
        return self.slack.wait_for(
            lambda: (lambda rows: rows if len(rows) >= count else None)(
                self.store.deployments(limit=100)),
            timeout, f"{count} deployment(s) in the store")

    def wait_for_status(self, deployment_id: int, *statuses: str, timeout: float = 60):
        return self.slack.wait_for(
            lambda: self.store.deployment(deployment_id).status.value in statuses,
            timeout, f"deployment #{deployment_id} to become {'/'.join(statuses)}")


@contextmanager
def running_bot(config: Config, db_path: Path, *, usergroups: dict[str, list[str]] | None = None,
                workers: int = 8, slack: FakeSlack | None = None,
                **edges) -> Iterator[BotUnderTest]:
    """`edges`: tracker, backend_for, probe, clock (and reporter_factory) to replace the
    configured ones; `slack`: a FakeSlack of the test's own (limits, channels), not started."""
    slack = (slack or FakeSlack(usergroups=usergroups)).start()
    store = Store(db_path)
    front = server = send = None
    thread = None
    try:
        front = SlackFrontEnd(config, store, web_client(slack.bot_token, slack.api_url),
                              signing_secret=SECRET, environ={}, workers=workers, **edges)
        server = make_http_server(front.app, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                  daemon=True, name=f"slack-app-{uuid.uuid4().hex[:6]}")
        thread.start()
        url = f"http://127.0.0.1:{server.server_port}/slack/events"
        send = SlackRequests(url, SECRET, hooks_url=slack.hooks_url)
        yield BotUnderTest(slack, front, send, store, url, workers)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        if send is not None:
            send.close()
        if front is not None:
            front.close()
        slack.stop()
        store.close()
