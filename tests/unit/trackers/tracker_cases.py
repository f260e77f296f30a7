"""One case per adapter: a fake tracker, the adapter built against it, and what to expect.

By default the adapter talks to the fake through an httpx.MockTransport, its waits (backoff,
Retry-After) are recorded in `sleeps` instead of slept, and its wall clock is the fakes' NOW;
`sockets=True` serves the fake on a real local HTTP server with real waits (the benchmarks)."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from backends.trackers import KINDS
from backends.trackers.local import LocalTracker
from bot.store import Store
from tracker_fakes import (BASE_TIME, NOW, TOKEN, FakeApp, FakeServer, FakeTransport, GitHubApp,
                           GitLabApp, JiraApp, LinearApp, RedmineApp)


@dataclass
class Case:
    kind: str
    app: Any  # a FakeApp, or a LocalApp
    server: Any  # the FakeTracker; None for the local tracker (no HTTP)
    tracker: Any
    ref: str  # what a person types
    canonical: str  # what parse_ref returns
    settings: dict
    environ: dict
    seams: dict  # what the adapter is built with besides settings: transport, sleep, now
    sleeps: list[float]  # every wait the adapters of this case asked for, in order

    def build(self, **override: Any) -> Any:
        return KINDS[self.kind]({**self.settings, **override}, self.environ, **self.seams)

    def build_with_token(self, token: str) -> Any:
        return KINDS[self.kind](self.settings, {**self.environ, "TRACKER_TOKEN": token}, **self.seams)


SPECS: dict[str, tuple[Callable[[int], FakeApp], dict, str, str]] = {
    # kind: (app factory, adapter settings, reference typed, canonical id)
    "jira-cloud": (lambda n: JiraApp(n, cloud=True), {"project": "PROJ", "email_env": "TRACKER_EMAIL"},
                   "PROJ-7", "PROJ-7"),
    "jira-dc": (lambda n: JiraApp(n, cloud=False), {"project": "PROJ"}, "proj-7", "PROJ-7"),
    "github": (GitHubApp, {"repo": "acme/shop", "statuses": ["Ready for Production", "Deployed", "In Progress"]},
               "#7", "acme/shop#7"),
    "gitlab": (GitLabApp, {"project": "acme/web/shop",
                           "statuses": ["Ready for Production", "Deployed", "In Progress"]},
               "acme/web/shop#7", "acme/web/shop#7"),
    "linear": (LinearApp, {"team": "ENG"}, "ENG-7", "ENG-7"),
    "redmine": (RedmineApp, {"project": "webshop"}, "#7", "7"),
}


@contextlib.contextmanager
def case(kind: str, n_comments: int = 2, latency: float = 0.0, sockets: bool = False,
         **settings: Any) -> Iterator[Case]:
    factory, extra, ref, canonical = SPECS[kind]
    app = factory(n_comments)
    sleeps: list[float] = []
    with (FakeServer if sockets else FakeTransport)(app, latency=latency) as server:
        seams: dict = {} if sockets else {"transport": server.transport, "sleep": sleeps.append,
                                          "now": lambda: NOW}
        conf = {"kind": kind, "url": server.url, "token_env": "TRACKER_TOKEN", "timeout": 2,
                "retries": 3, "backoff": 0.01, **extra, **settings}
        environ = {"TRACKER_TOKEN": TOKEN, "TRACKER_EMAIL": "bot@example.test"}
        tracker = KINDS[kind](conf, environ, **seams)
        try:
            yield Case(kind, app, server, tracker, ref, canonical, conf, environ, seams, sleeps)
        finally:
            tracker.close()


class LocalApp:
    """For LocalTracker what the fake apps are for the HTTP adapters: notes written straight to
    the tracker's store at a given time. Logins are the ids and the names (no registry)."""

    kind = "local"
    tie_break = 1  # the store's rowid order decides; nothing to flip

    def __init__(self, db: Path, n_comments: int) -> None:
        self.at = BASE_TIME
        self.store = Store(db, clock=self.clock)  # notes are written at the time add_note says
        self.tracker = tracker = LocalTracker(self.store)
        self.ticket = tracker.create_ticket("Checkout: fix rounding of totals", ticket_id="PROJ-7",
                                            status="Ready for Production")
        base = [("carol", "CQ approved: looks good"), ("quinn", "QA PASS on staging")]
        for n in range(n_comments):
            login, text = base[n] if n < len(base) else ("alice", f"progress note {n}")
            self.add_note(login, text, BASE_TIME + timedelta(minutes=n))

    def clock(self) -> datetime:
        return self.at

    def add_note(self, login: str, text: str, created: datetime | None = None) -> None:
        self.at = created or self.at + timedelta(minutes=1)
        self.tracker.add_comment(self.ticket, text, author=login)

    def account_id(self, login: str) -> str:
        return login

    login_ref = id_ref = account_id


@contextlib.contextmanager
def local_case(n_comments: int = 2) -> Iterator[Case]:
    with tempfile.TemporaryDirectory() as tmp:
        app = LocalApp(Path(tmp) / "deploybot.db", n_comments)
        try:
            yield Case("local", app, None, app.tracker, "#proj-7", "PROJ-7", {}, {}, {}, [])
        finally:
            app.store.close()


def any_case(kind: str, n_comments: int = 2) -> contextlib.AbstractContextManager[Case]:
    """`case` for the HTTP adapters, `local_case` for the embedded tracker."""
    return local_case(n_comments) if kind == "local" else case(kind, n_comments)
