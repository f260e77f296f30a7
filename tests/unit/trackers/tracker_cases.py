"""One case per adapter: a fake tracker, the adapter built against it, and what to expect.

By default the adapter talks to the fake through an httpx.MockTransport, its waits (backoff,
Retry-After) are recorded in `sleeps` instead of slept, and its wall clock is the fakes' NOW;
`sockets=True` serves the fake on a real local HTTP server with real waits (the benchmarks)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from backends.trackers import KINDS
from tracker_fakes import (NOW, TOKEN, FakeApp, FakeServer, FakeTracker, FakeTransport, GitHubApp,
                           GitLabApp, JiraApp, LinearApp, RedmineApp)


@dataclass
class Case:
    kind: str
    app: FakeApp
    server: FakeTracker
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
