"""One case per adapter: a fake server, the adapter built against it, and what to expect."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from backends.trackers import KINDS
from tracker_fakes import (TOKEN, FakeApp, FakeServer, GitHubApp, GitLabApp, JiraApp, LinearApp,
                           RedmineApp)


@dataclass
class Case:
    kind: str
    app: FakeApp
    server: FakeServer
    tracker: Any
    ref: str  # what a person types
    canonical: str  # what parse_ref returns
    settings: dict
    environ: dict

    def build(self, **override: Any) -> Any:
        return KINDS[self.kind]({**self.settings, **override}, self.environ)

    def build_with_token(self, token: str) -> Any:
        return KINDS[self.kind](self.settings, {**self.environ, "TRACKER_TOKEN": token})


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
def case(kind: str, n_comments: int = 2, latency: float = 0.0, **settings: Any) -> Iterator[Case]:
    factory, extra, ref, canonical = SPECS[kind]
    app = factory(n_comments)
    with FakeServer(app, latency=latency) as server:
        conf = {"kind": kind, "url": server.url, "token_env": "TRACKER_TOKEN", "timeout": 2,
                "retries": 3, "backoff": 0.01, **extra, **settings}
        environ = {"TRACKER_TOKEN": TOKEN, "TRACKER_EMAIL": "bot@example.test"}
        tracker = KINDS[kind](conf, environ)
        try:
            yield Case(kind, app, server, tracker, ref, canonical, conf, environ)
        finally:
            tracker.close()
