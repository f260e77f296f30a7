"""Fake trackers that answer like each tracker's API: in memory behind an httpx.MockTransport
(the unit tests: no sockets, no real waits) or as local HTTP servers (the benchmarks).

Payload shapes follow each API's documentation: Jira's /rest/api/{2,3}/issue/{key}/comment page
(startAt/maxResults/total), ADF bodies; GitHub issue comments with a `Link` header; GitLab notes
with `system: true` and X-Total-Pages; Linear GraphQL with RATELIMITED errors; Redmine journals.
Every fake also answers its user endpoints (who the token is, a user by login/id) from one
registry of people whose display names a test may change (`app.rename`) while ids and logins
stay; `app.tie_break = -1` makes fakes whose API leaves the order of equal timestamps open
(Jira, GitLab) answer those newest first.
Faults (5xx, 429 + Retry-After, slow answers, a write that lands but answers 502) are scripted
per test with `server.fault(...)`. Used by the unit tests and by benchmarks/tracker_gate_check.py.
Wall-clock values a fake hands out (reset headers) are counted from NOW, the clock the adapters
under test are given.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

TOKEN = "s3cret-token-value"  # what the fakes accept; tests assert it never shows in messages
# Exceptions raised inside a fake's handler (a bug of the fake, not of the adapter under test).
BUGS: list[str] = []
BASE_TIME = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
NOW = BASE_TIME.timestamp() + 86400.0  # the wall clock the unit tests give the adapters

PEOPLE = {  # login -> (Jira Cloud accountId, display name); the order gives the numeric ids
    "carol": ("5b10ac8d82e05b22cc7d4ef5", "Carol Reviewer"),
    "quinn": ("5b10a2844c20165700ede21g", "Quinn Tester"),
    "alice": ("5b109f2e9729b51b54dc274d", "Alice Developer"),
    "deploybot": ("5c10a2844c20165700ede999", "Deploy Bot"),
    "bob": ("5d2e0f1a7c3b4a0012ab34cd", "Bob Builder"),  # whom a renamed alice must never become
}


@dataclass
class Person:
    """One account. `name` is what the person may edit; everything else stays."""

    login: str
    num: int  # position: the per-tracker numeric ids derive from it
    account_id: str  # Jira Cloud
    name: str

    @property
    def uuid(self) -> str:  # Linear user id
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://linear.example/user/{self.login}"))

    @property
    def first(self) -> str:  # Redmine splits the name in two
        return self.name.split(" ", 1)[0]

    @property
    def last(self) -> str:
        return self.name.split(" ", 1)[1] if " " in self.name else ""


@dataclass
class Note:
    id: int
    login: str
    text: str  # markdown / plain text as a person typed it
    created: datetime
    raw: Any = None  # body in the tracker's own format when posted through the API
    props: list = field(default_factory=list)
    system: bool = False
    updated: datetime | None = None  # set by an edit

    @property
    def last_update(self) -> datetime:
        return self.updated or self.created


@dataclass
class Fault:
    match: Callable[[str, str, str], bool]
    status: int
    headers: dict
    body: Any
    times: int
    delay: float = 0.0
    skip: int = 0  # let this many matching requests through untouched first
    after: bool = False  # handle the request first, then answer with the fault (an ambiguous write)
    # after=True: `delay` comes after the request was handled (the write is committed, the answer
    # is late); status 0 then answers what the API would have answered, only late.


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    body: Any


class FakeTracker:
    """What a fake tracker does whoever carries the request: the log, scripted faults, the app.

    `latency` is a real wait per request (the benchmarks' round trip); fault delays are handed
    to `pause`, which the socket server sleeps and the in-memory transport compares with the
    client's timeout."""

    url = ""

    def __init__(self, app: "FakeApp", latency: float = 0.0) -> None:
        self.app = app
        self.latency = latency
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def fault(self, status: int = 503, *, method: str = "", path: str = "", times: int = 1,
              headers: dict | None = None, body: Any = None, delay: float = 0.0, after: bool = False,
              request_contains: str = "", skip: int = 0) -> None:
        """The next `times` requests matching method/path (regex)/body text get this answer instead
        (status 0: answer normally, after `delay`)."""
        rx = re.compile(path) if path else None
        self.faults.append(Fault(
            lambda m, p, b: (not method or m == method) and (rx is None or bool(rx.search(p)))
            and request_contains in b,
            status, headers or {}, body, times, delay, skip, after,
        ))

    def count(self, method: str = "", path: str = "") -> int:
        return sum(1 for m, p in self.log if (not method or m == method) and re.search(path or "", p))

    def _take_fault(self, method: str, path: str, raw: bytes) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.times > 0 and f.match(method, path, raw.decode(errors="replace")):
                    if f.skip > 0:
                        f.skip -= 1
                        continue
                    f.times -= 1
                    return f
        return None

    def respond(self, method: str, target: str, headers: dict, raw: bytes,
                pause: Callable[[float], None]) -> tuple[int, dict, Any]:
        """The answer to one request (method, path?query, lower-case headers, body bytes)."""
        parts = urlsplit(target)
        body = json.loads(raw) if raw and "json" in (headers.get("content-type") or "") else raw
        req = Request(method, unquote(parts.path), {k: v[-1] for k, v in parse_qs(parts.query).items()},
                      headers, body)
        with self._lock:
            self.log.append((req.method, req.path))
        if self.latency:
            time.sleep(self.latency)
        fault = self._take_fault(req.method, req.path, raw)
        if fault and fault.delay and not fault.after:
            pause(fault.delay)
        if fault and not fault.after and fault.status:
            return fault.status, fault.headers, fault.body
        try:
            status, out_headers, out = self.app.handle(req, self.url)
        except Exception as exc:  # a bug in a fake must show, not hang the client
            status, out_headers, out = 500, {}, {"error": repr(exc)}
            # ...and fail the test (conftest.py): an adapter that retries a 500 and verifies
            # would otherwise hide it
            BUGS.append(f"{self.app.kind} fake: {req.method} {req.path}: {exc!r}")
        if fault and fault.after:
            pause(fault.delay)  # committed, answered late
            if fault.status:
                status, out_headers, out = fault.status, fault.headers, fault.body
        return status, out_headers, out


def encode(out: Any) -> bytes:
    if out is None:
        return b""
    if isinstance(out, (bytes, str)):
        return out.encode() if isinstance(out, str) else out
    return json.dumps(out).encode()


class FakeTransport(FakeTracker):
    """The fake behind an httpx.MockTransport: no socket, no real wait for a scripted delay.

    A delay at least as long as the client's read timeout raises httpx.ReadTimeout after the
    request was handled as the socket server would handle it (a late write still lands); a
    shorter one is answered at once. Requests to any other origin are refused (ConnectError)."""

    url = "http://tracker.test"

    def __init__(self, app: "FakeApp", latency: float = 0.0) -> None:
        super().__init__(app, latency)
        self.transport = httpx.MockTransport(self._serve)

    def __enter__(self) -> "FakeTransport":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def _serve(self, request: httpx.Request) -> httpx.Response:
        if f"{request.url.scheme}://{request.url.netloc.decode()}" != self.url:
            raise httpx.ConnectError("connection refused", request=request)
        delays: list[float] = []
        target = request.url.raw_path.decode()
        headers = {k.lower(): v for k, v in request.headers.items()}
        status, out_headers, out = self.respond(request.method, target, headers, request.read(),
                                                delays.append)
        timeout = (request.extensions.get("timeout") or {}).get("read")
        if timeout is not None and sum(delays) >= timeout:
            raise httpx.ReadTimeout("the fake answered after the client's timeout", request=request)
        data = encode(out)
        out_headers = {k: str(v) for k, v in out_headers.items()}
        if data and "Content-Type" not in out_headers:
            out_headers["Content-Type"] = "application/json; charset=utf-8"
        return httpx.Response(status, headers=out_headers, content=data, request=request)


class FakeServer(FakeTracker):
    """A ThreadingHTTPServer on 127.0.0.1 with a per-request latency and scripted faults (real
    sleeps); the benchmarks and anything that needs a real socket use it."""

    def __init__(self, app: "FakeApp", latency: float = 0.0) -> None:
        super().__init__(app, latency)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without this, Nagle's algorithm holds the
            # body back for the client's delayed ACK (40 ms) on a kept-alive connection
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                server._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        status, out_headers, out = self.respond(h.command, h.path, headers, raw, time.sleep)
        self._send(h, status, out_headers, out)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, headers: dict, out: Any) -> None:
        data = encode(out)
        try:
            h.send_response(status)
            if data and "Content-Type" not in headers:
                h.send_header("Content-Type", "application/json; charset=utf-8")
            for k, v in headers.items():
                h.send_header(k, str(v))
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


def iso_z(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_ms(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class FakeApp:
    """Shared state: one ticket per app, its notes, status, labels; subclasses speak the API."""

    kind = ""
    statuses = ["New", "In Progress", "Ready for Production", "Deployed", "Closed"]
    # The workflow: which statuses each status may move to.
    workflow = {"New": ["In Progress"], "In Progress": ["Ready for Production"],
                "Ready for Production": ["Deployed", "In Progress"], "Deployed": [], "Closed": []}

    tie_break = 1  # -1: equal timestamps newest first, where the API leaves that order open

    def __init__(self, n_comments: int = 2, title: str = "Checkout: fix rounding of totals") -> None:
        self.title = title
        self.people = {login: Person(login, i, uid, name) for i, (login, (uid, name)) in enumerate(PEOPLE.items())}
        self.status = "Ready for Production"
        self.labels: list[str] = ["backend"]
        self.notes: list[Note] = []
        self._next = 1000
        base = [("carol", "CQ approved: looks good"), ("quinn", "QA PASS on staging")]
        for n in range(n_comments):
            login, text = base[n] if n < len(base) else ("alice", f"progress note {n}")
            self.add_note(login, text, BASE_TIME + timedelta(minutes=n))
        self.lock = threading.Lock()

    def rename(self, login: str, name: str) -> None:
        """The person edits their display name; id and login stay."""
        self.people[login].name = name

    def add_person(self, login: str, name: str) -> Person:
        person = Person(login, len(self.people), f"70{len(self.people):022x}", name)
        self.people[login] = person
        return person

    def by_created(self, notes: list[Note] | None = None, reverse: bool = False) -> list[Note]:
        """Order by creation time; equal times by id (tie_break 1) or newest first (-1)."""
        return sorted(self.notes if notes is None else notes,
                      key=lambda n: (n.created, self.tie_break * n.id), reverse=reverse)

    # What a person writes in people: (login_ref), the numeric/stable-id form (id_ref), and the
    # stable id the tracker's comments carry (account_id). Subclasses say what they are.
    def account_id(self, login: str) -> str:  # pragma: no cover - per tracker
        raise NotImplementedError

    def login_ref(self, login: str) -> str:
        return login

    def id_ref(self, login: str) -> str:
        return self.account_id(login)

    def add_note(self, login: str, text: str, created: datetime | None = None, **kw: Any) -> Note:
        self._next += 1
        if created is None:  # the fake's own clock: a minute after its newest note, never "today"
            created = max((n.created for n in self.notes), default=BASE_TIME) + timedelta(minutes=1)
        note = Note(self._next, login, text, created, **kw)
        self.notes.append(note)
        return note

    def edit(self, note: Note, text: str) -> None:
        """A person edits a comment: new text, a newer update time (the fake's own clock)."""
        note.text, note.raw = text, None
        note.updated = max(n.last_update for n in self.notes) + timedelta(minutes=1)

    def authorized(self, req: Request) -> bool:
        auth = req.headers.get("authorization", "")
        if auth.startswith("Basic "):  # Jira Cloud: email:api-token
            auth = base64.b64decode(auth[6:]).decode(errors="replace")
        return auth.endswith(TOKEN) or TOKEN in req.headers.get(
            "private-token", "") or TOKEN == req.headers.get("x-redmine-api-key")

    def handle(self, req: Request, base: str) -> tuple[int, dict, Any]:
        with self.lock:
            return self.route(req, base)

    def route(self, req: Request, base: str) -> tuple[int, dict, Any]:  # pragma: no cover
        raise NotImplementedError


# -- Jira ---------------------------------------------------------------------------------------


def adf_text(text: str) -> dict:
    """A person's comment as Jira Cloud stores it: paragraphs of text, with a mention."""
    paras = []
    for line in text.split("\n"):
        paras.append({"type": "paragraph", "content": [{"type": "text", "text": line}] if line else []})
    return {"type": "doc", "version": 1, "content": paras}


class JiraApp(FakeApp):
    kind = "jira"
    page_cap = 100  # Jira returns at most this many comments per page whatever maxResults says
    honours_order = True  # False: orderBy ignored, oldest first (a Jira that does not know it)

    def __init__(self, n_comments: int = 2, *, cloud: bool = True, key: str = "PROJ-7") -> None:
        self.cloud = cloud
        self.key = key
        self.touched = BASE_TIME  # the last change to the issue's own fields (status, labels)
        super().__init__(n_comments)

    def updated(self) -> datetime:
        """The issue's `updated`: its newest change, comments added or edited included. A deleted
        comment does not move it here: the adapter must prove deletions by the total."""
        return max([self.touched, *(n.last_update for n in self.notes)])

    def touch(self) -> None:
        self.touched = self.updated() + timedelta(minutes=1)

    def move(self, status: str) -> None:
        """A person moves the issue in Jira's own UI."""
        self.status = status
        self.touch()

    # Jira stamps comments with its own clock: after every earlier change to the issue.
    def add_note(self, login: str, text: str, created: datetime | None = None, **kw: Any) -> Note:
        if created is None and self.notes:
            created = self.updated() + timedelta(minutes=1)
        return super().add_note(login, text, created, **kw)

    def edit(self, note: Note, text: str) -> None:
        later = self.updated() + timedelta(minutes=1)
        super().edit(note, text)
        note.updated = later

    def account_id(self, login: str) -> str:
        p = self.people[login]
        return p.account_id if self.cloud else f"JIRAUSER{10000 + p.num}"  # DC: the user key

    def login_ref(self, login: str) -> str:
        return self.people[login].account_id if self.cloud else login

    def _user(self, login: str) -> dict:
        p = self.people[login]
        if self.cloud:
            return {"self": f"https://x.atlassian.net/rest/api/3/user?accountId={p.account_id}",
                    "accountId": p.account_id, "displayName": p.name, "active": True,
                    "accountType": "atlassian", "timeZone": "UTC"}
        return {"self": f"https://jira.example/rest/api/2/user?username={login}", "name": login,
                "key": self.account_id(login), "displayName": p.name, "active": True}

    def _find_user(self, query: dict) -> str | None:
        for login in self.people:
            u = self._user(login)
            if self.cloud and query.get("accountId") and u["accountId"] == query["accountId"]:
                return login
            if not self.cloud and query.get("username") and login == query["username"].lower():
                return login  # Jira DC usernames are case-insensitive
            if not self.cloud and query.get("key") and u["key"] == query["key"]:
                return login
        return None

    list_page = 50  # "Get comments by IDs" answers a page (PageBeanComment) of this many

    def _transitions(self) -> list[dict]:
        return [{"id": str(11 + self.statuses.index(to)), "name": f"Move to {to}",
                 "to": {"name": to, "id": str(10000 + self.statuses.index(to))},
                 "hasScreen": False, "isGlobal": False, "isInitial": False, "isAvailable": True,
                 "isConditional": False} for to in self.workflow[self.status]]

    def _comment(self, n: Note, base: str, expand: str = "") -> dict:
        if n.raw is not None:
            body = n.raw
        elif self.cloud:
            body = adf_text(n.text)
            if n.text.startswith("CQ approved"):  # a real-looking ADF body: mention + emoji
                body["content"][0]["content"] = [
                    {"type": "text", "text": "CQ approved", "marks": [{"type": "strong"}]},
                    {"type": "text", "text": ": looks good, thanks "},
                    {"type": "mention", "attrs": {"id": PEOPLE["alice"][0], "text": "@Alice Developer",
                                                   "accessLevel": ""}},
                    {"type": "text", "text": " "},
                    {"type": "emoji", "attrs": {"shortName": ":thumbsup:", "id": "1f44d", "text": "👍"}},
                ]
        else:
            body = n.text
        c = {"self": f"{base}{self.api}/issue/10007/comment/{n.id}", "id": str(n.id),
             "author": self._user(n.login), "body": body, "updateAuthor": self._user(n.login),
             "created": n.created.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
             "updated": n.last_update.strftime("%Y-%m-%dT%H:%M:%S.000+0000"), "jsdPublic": True}
        if "properties" in expand:  # documented only on POST comment/list (Cloud)
            c["properties"] = n.props
        return c

    def _comment_api(self, req: Request, base: str) -> tuple[int, dict, Any] | None:
        """/comment/list (Cloud only: "Get comments by IDs") and /comment/{id}/properties/{key}."""
        p = req.path
        if p == f"{self.api}/comment/list" and req.method == "POST" and self.cloud:
            ids = [int(i) for i in req.body.get("ids") or []]
            if len(ids) > 1000:
                return 400, {}, {"errorMessages": ["The number of comment ids is too large."], "errors": {}}
            found = [n for n in sorted(self.notes, key=lambda n: n.id) if n.id in ids]
            page = found[:self.list_page]
            return 200, {}, {"maxResults": self.list_page, "startAt": 0, "total": len(found),
                             "isLast": len(found) <= self.list_page,
                             "values": [self._comment(n, base, req.query.get("expand", "")) for n in page]}
        m = re.fullmatch(rf"{self.api}/comment/(\d+)/properties/([^/]+)", p)
        if m and req.method == "GET":
            note = next((n for n in self.notes if n.id == int(m.group(1))), None)
            if note is None:
                return 404, {}, {"errorMessages": ["Can not find a comment for the id: " + m.group(1)], "errors": {}}
            prop = next((x for x in note.props if x.get("key") == m.group(2)), None)
            if prop is None:
                return 404, {}, {"errorMessages": [f"The property with key '{m.group(2)}' does not exist."],
                                 "errors": {}}
            return 200, {}, {"key": prop["key"], "value": prop["value"]}
        return None

    @property
    def api(self) -> str:
        return "/rest/api/3" if self.cloud else "/rest/api/2"

    def route(self, req: Request, base: str) -> tuple[int, dict, Any]:
        if not self.authorized(req):
            return 401, {"Content-Type": "text/plain"}, "Client must be authenticated to access this resource."
        p = req.path
        if p == f"{self.api}/myself":
            u = self._user("deploybot")
            return 200, {}, u
        if p == f"{self.api}/user" and req.method == "GET":
            login = self._find_user(req.query)
            if login is None:
                return 404, {}, {"errorMessages": ["Specified user does not exist or you do not have required "
                                                   "permissions" if self.cloud else "The user named "
                                                   f"'{req.query.get('username') or req.query.get('key')}' "
                                                   "does not exist"], "errors": {}}
            return 200, {}, self._user(login)
        if p == f"{self.api}/project/PROJ":
            return 200, {}, {"id": "10000", "key": "PROJ", "name": "Project"}
        if p.startswith(f"{self.api}/comment/") and (answer := self._comment_api(req, base)) is not None:
            return answer
        m = re.fullmatch(rf"{self.api}/issue/([^/]+)(/comment|/transitions)?", p)
        if not m or m.group(1) != self.key:
            return 404, {}, {"errorMessages": ["Issue does not exist or you do not have permission to see it."],
                             "errors": {}}
        sub = m.group(2)
        if sub is None and req.method == "GET" and "transitions" in req.query.get("expand", ""):
            return 200, {}, {"id": "10007", "key": self.key, "transitions": self._transitions(),
                             "fields": {"status": {"name": self.status}}}
        if sub is None and req.method == "GET":
            fields = {"summary": self.title, "labels": self.labels,
                      "status": {"name": self.status, "id": str(10000 + self.statuses.index(self.status)),
                                 "statusCategory": {"key": "indeterminate"}},
                      "issuetype": {"name": "Story"}, "priority": {"name": "Medium"},
                      "created": BASE_TIME.strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
                      "updated": self.updated().strftime("%Y-%m-%dT%H:%M:%S.000+0000"),
                      "description": adf_text("Totals are rounded twice.") if self.cloud else
                      "Totals are *rounded* twice."}
            wanted = [f for f in req.query.get("fields", "").split(",") if f]
            if wanted and "*all" not in wanted:  # Jira answers only the fields asked for
                fields = {k: v for k, v in fields.items() if k in wanted}
            return 200, {}, {"id": "10007", "key": self.key, "self": f"{base}{self.api}/issue/10007",
                             "fields": fields}
        if sub is None and req.method == "PUT":
            for op in req.body.get("update", {}).get("labels", []):
                if "add" in op and op["add"] not in self.labels:
                    self.labels.append(op["add"])
                    self.touch()
            return 204, {}, None
        if sub == "/comment" and req.method == "GET":
            start = int(req.query.get("startAt", 0))
            size = min(int(req.query.get("maxResults", 5000)), self.page_cap)
            # orderBy=created: equal times in no promised order; -created: newest first
            notes = self.by_created(reverse=req.query.get("orderBy") == "-created" and self.honours_order)
            page = notes[start:start + size]
            return 200, {}, {"startAt": start, "maxResults": size, "total": len(notes),
                             # expand= documents only renderedBody here: never properties
                             "comments": [self._comment(n, base) for n in page]}
        if sub == "/comment" and req.method == "POST":
            body = req.body["body"]
            if self.cloud and not (isinstance(body, dict) and body.get("type") == "doc"):
                return 400, {}, {"errorMessages": [], "errors": {"comment": "Comment body is not valid ADF."}}
            n = self.add_note("deploybot", "", raw=body, props=req.body.get("properties") or [])
            return 201, {}, self._comment(n, base)
        if sub == "/transitions" and req.method == "GET":
            return 200, {}, {"expand": "transitions", "transitions": self._transitions()}
        if sub == "/transitions" and req.method == "POST":
            tid = int(req.body["transition"]["id"]) - 11
            target = self.statuses[tid] if 0 <= tid < len(self.statuses) else ""
            if target not in self.workflow[self.status]:
                return 400, {}, {"errorMessages": ["Transition id is not valid for this issue."], "errors": {}}
            self.status = target
            self.touch()
            return 204, {}, None
        return 405, {}, {"errorMessages": ["method not allowed"]}


# -- GitHub -------------------------------------------------------------------------------------


class GitHubApp(FakeApp):
    kind = "github"
    repo = "acme/shop"

    def __init__(self, n_comments: int = 2) -> None:
        super().__init__(n_comments)
        self.labels = ["backend", "status:Ready for Production"]

    def _label(self, name: str) -> dict:
        return {"id": abs(hash(name)) % 10**9, "node_id": "LA_x", "url": "", "name": name,
                "color": "ededed", "default": False, "description": None}

    def _issue(self, base: str) -> dict:
        return {"id": 1296269, "node_id": "I_kwDO", "number": 7, "title": self.title,
                "state": "closed" if self.status == "Closed" else "open",
                "labels": [self._label(n) for n in self.labels],
                "html_url": f"https://github.com/{self.repo}/issues/7",
                "url": f"{base}/repos/{self.repo}/issues/7", "body": "Totals are rounded twice.",
                "user": {"login": "alice", "id": 3}, "comments": len(self.notes),
                "created_at": iso_z(BASE_TIME)}

    def account_id(self, login: str) -> str:
        return str(100 + self.people[login].num)

    def _simple_user(self, login: str) -> dict:
        uid = int(self.account_id(login))
        return {"login": login, "id": uid, "node_id": f"U_{uid}", "avatar_url": "", "url": "",
                "html_url": f"https://github.com/{login}", "type": "User", "site_admin": False}

    def _full_user(self, login: str) -> dict:
        return {**self._simple_user(login), "name": self.people[login].name, "company": None,
                "blog": "", "location": None, "email": None, "bio": None, "public_repos": 2,
                "followers": 0, "following": 0, "created_at": iso_z(BASE_TIME)}

    def _comment(self, n: Note) -> dict:
        return {"id": n.id, "node_id": f"IC_{n.id}", "url": "", "html_url":
                f"https://github.com/{self.repo}/issues/7#issuecomment-{n.id}",
                "body": n.raw if n.raw is not None else n.text,
                "user": self._simple_user(n.login),
                "created_at": iso_z(n.created), "updated_at": iso_z(n.last_update),
                "author_association": "MEMBER"}

    def route(self, req: Request, base: str) -> tuple[int, dict, Any]:
        if not self.authorized(req):
            return 401, {}, {"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}
        p = req.path
        if p == "/user":
            return 200, {}, self._full_user("deploybot")
        not_found = {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
        if m := re.fullmatch(r"/users/([^/]+)", p):  # logins are case-insensitive
            login = next((x for x in self.people if x.lower() == m.group(1).lower()), None)
            return (404, {}, not_found) if login is None else (200, {}, self._full_user(login))
        if m := re.fullmatch(r"/user/(\d+)", p):
            login = next((x for x in self.people if self.account_id(x) == m.group(1)), None)
            return (404, {}, not_found) if login is None else (200, {}, self._full_user(login))
        if p == f"/repos/{self.repo}":
            return 200, {}, {"id": 1, "full_name": self.repo, "has_issues": True}
        m = re.fullmatch(rf"/repos/{self.repo}/issues/(\d+)(/comments|/labels(?:/(.+))?)?", p)
        if not m or m.group(1) != "7":
            return 404, {}, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
        sub = m.group(2) or ""
        if sub == "" and req.method == "GET":
            return 200, {}, self._issue(base)
        if sub == "/comments" and req.method == "GET":
            per = min(int(req.query.get("per_page", 30)), 100)
            page = int(req.query.get("page", 1))
            notes = sorted(self.notes, key=lambda n: n.id)  # GitHub: ascending comment id
            if "since" in req.query:  # updated at or after, whole seconds
                since = datetime.strptime(req.query["since"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
                notes = [n for n in notes if n.last_update.replace(microsecond=0) >= since]
            last = max(1, -(-len(notes) // per))
            link = []
            url = f"{base}/repos/{self.repo}/issues/7/comments?per_page={per}" + (
                f"&since={req.query['since']}" if "since" in req.query else "") + "&page="
            if page < last:
                link += [f'<{url}{page + 1}>; rel="next"', f'<{url}{last}>; rel="last"']
            if page > 1:
                link += [f'<{url}1>; rel="first"', f'<{url}{page - 1}>; rel="prev"']
            headers = {"Link": ", ".join(link)} if link else {}
            return 200, headers, [self._comment(n) for n in notes[(page - 1) * per: page * per]]
        if sub == "/comments" and req.method == "POST":
            n = self.add_note("deploybot", req.body["body"], raw=req.body["body"])
            return 201, {}, self._comment(n)
        if sub == "/labels" and req.method == "POST":
            for name in req.body["labels"]:
                if name not in self.labels:
                    self.labels.append(name)
            self._sync_status()
            return 200, {}, [self._label(n) for n in self.labels]
        if sub.startswith("/labels/") and req.method == "DELETE":
            name = m.group(3)
            if name not in self.labels:
                return 404, {}, {"message": "Label does not exist"}
            self.labels.remove(name)
            return 200, {}, [self._label(n) for n in self.labels]
        return 404, {}, {"message": "Not Found"}

    def _sync_status(self) -> None:
        for name in self.labels:
            if name.startswith("status:"):
                self.status = name[len("status:"):]


# -- GitLab -------------------------------------------------------------------------------------


class GitLabApp(FakeApp):
    kind = "gitlab"
    project = "acme/web/shop"

    def __init__(self, n_comments: int = 2) -> None:
        super().__init__(n_comments)
        self.labels = ["backend", "status::Ready for Production"]
        # GitLab writes system notes for label changes; they are not comments.
        self.add_note("alice", "added ~\"status::Ready for Production\" scoped label",
                      BASE_TIME - timedelta(minutes=1), system=True)

    def account_id(self, login: str) -> str:
        return str(10 + self.people[login].num)

    def _user(self, login: str) -> dict:
        return {"id": int(self.account_id(login)), "username": login, "name": self.people[login].name,
                "state": "active", "locked": False, "avatar_url": "",
                "web_url": f"https://gitlab.example/{login}"}

    def _note(self, n: Note) -> dict:
        return {"id": n.id, "type": None, "body": n.raw if n.raw is not None else n.text, "attachment": None,
                "author": self._user(n.login),
                "created_at": iso_ms(n.created), "updated_at": iso_ms(n.last_update), "system": n.system,
                "noteable_id": 377, "noteable_type": "Issue", "noteable_iid": 7, "resolvable": False,
                "confidential": False, "internal": False}

    def _issue(self, base: str) -> dict:
        return {"id": 377, "iid": 7, "project_id": 3, "title": self.title, "description": "Totals.",
                "state": "closed" if self.status == "Closed" else "opened", "labels": list(self.labels),
                "web_url": f"{base}/{self.project}/-/issues/7", "author": {"username": "alice"},
                "user_notes_count": sum(not n.system for n in self.notes),
                "created_at": iso_ms(BASE_TIME)}

    def route(self, req: Request, base: str) -> tuple[int, dict, Any]:
        if not self.authorized(req):
            return 401, {}, {"message": "401 Unauthorized"}
        p = req.path
        if p == "/api/v4/user":
            return 200, {}, {**self._user("deploybot"), "bot": False, "created_at": iso_ms(BASE_TIME)}
        if p == "/api/v4/users":  # ?username= is an exact, case-insensitive lookup
            want = (req.query.get("username") or "").lower()
            return 200, {}, [self._user(x) for x in self.people if x.lower() == want]
        if m := re.fullmatch(r"/api/v4/users/(\d+)", p):
            login = next((x for x in self.people if self.account_id(x) == m.group(1)), None)
            return (404, {}, {"message": "404 User Not Found"}) if login is None else (200, {}, self._user(login))
        if p == f"/api/v4/projects/{self.project}":
            return 200, {}, {"id": 3, "path_with_namespace": self.project}
        m = re.fullmatch(rf"/api/v4/projects/{re.escape(self.project)}/issues/(\d+)(/notes)?", p)
        if not m or m.group(1) != "7":
            return 404, {}, {"message": "404 Not found"}
        if m.group(2) is None and req.method == "GET":
            return 200, {}, self._issue(base)
        if m.group(2) is None and req.method == "PUT":
            drop = [x for x in (req.body.get("remove_labels") or "").split(",") if x]
            add = [x for x in (req.body.get("add_labels") or "").split(",") if x]
            self.labels = [x for x in self.labels if x not in drop] + [x for x in add if x not in self.labels]
            for name in add:
                if name.startswith("status::"):
                    self.status = name[len("status::"):]
                    self.add_note("deploybot", f"added ~\"{name}\" scoped label", system=True)
            return 200, {}, self._issue(base)
        if req.method == "GET":
            per = min(int(req.query.get("per_page", 20)), 100)
            page = int(req.query.get("page", 1))
            if req.query.get("order_by") == "updated_at":
                notes = sorted(self.notes, key=lambda n: (n.last_update, n.id),
                               reverse=req.query.get("sort") != "asc")
            else:
                notes = self.by_created(reverse=req.query.get("sort") != "asc")
            pages = max(1, -(-len(notes) // per))
            headers = {"X-Total": len(notes), "X-Total-Pages": pages, "X-Page": page, "X-Per-Page": per,
                       "X-Next-Page": page + 1 if page < pages else "",
                       "X-Prev-Page": page - 1 if page > 1 else ""}
            return 200, headers, [self._note(n) for n in notes[(page - 1) * per: page * per]]
        n = self.add_note("deploybot", req.body["body"], raw=req.body["body"])
        return 201, {}, self._note(n)


# -- Linear -------------------------------------------------------------------------------------


class LinearApp(FakeApp):
    kind = "linear"
    ident = "ENG-7"
    issue_uuid = "9cfb482a-81e3-4154-b5b9-2c805e70a02d"
    statuses = ["Backlog", "Todo", "In Progress", "Ready for Production", "Deployed", "Canceled"]

    def __init__(self, n_comments: int = 2) -> None:
        super().__init__(n_comments)
        self.comment_ids: dict[int, str] = {}

    def _cid(self, n: Note) -> str:
        return self.comment_ids.get(n.id) or f"00000000-0000-4000-8000-{n.id:012d}"

    def account_id(self, login: str) -> str:
        return self.people[login].uuid

    def _user(self, login: str) -> dict:  # displayName: the handle; name: the full name
        return {"id": self.account_id(login), "name": self.people[login].name, "displayName": login}

    def route(self, req: Request, base: str) -> tuple[int, dict, Any]:
        if req.path != "/graphql" or req.method != "POST":
            return 404, {}, {"errors": [{"message": "Not found"}]}
        if not self.authorized(req):
            return 400, {}, {"errors": [{"message": "Authentication required, not authenticated",
                                         "extensions": {"type": "authentication error", "code": "AUTHENTICATION_ERROR",
                                                        "userPresentableMessage": "You need to authenticate to access this operation."}}]}
        q = req.body["query"]
        v = req.body.get("variables") or {}
        if "viewer" in q:
            return 200, {}, {"data": {"viewer": self._user("deploybot")}}
        if q.lstrip().startswith("query User("):
            login = next((x for x in self.people if self.account_id(x) == v.get("id")), None)
            if login is None:
                return 200, {}, {"data": None, "errors": [{"message": "Entity not found: User", "extensions": {
                    "type": "invalid input", "code": "INVALID_INPUT",
                    "userPresentableMessage": "Could not find referenced User."}}]}
            return 200, {}, {"data": {"user": self._user(login)}}
        if q.lstrip().startswith("query Users("):
            assert "displayName: { eq: $handle }" in q, q
            nodes = [self._user(x) for x in self.people if x == v.get("handle")]
            return 200, {}, {"data": {"users": {"nodes": nodes}}}
        if "query Labels" in q:
            return 200, {}, {"data": {"issueLabels": {"nodes": [
                {"id": f"lbl-{n}", "name": n} for n in ["backend", "deployed"] if n in v["names"]]}}}
        if q.lstrip().startswith("mutation Comment"):
            inp = v["input"]
            if inp.get("id") in self.comment_ids.values():
                return 200, {}, {"data": None, "errors": [{"message": "Entity already exists",
                                 "extensions": {"code": "INVALID_INPUT"}}]}
            if inp["issueId"] != self.issue_uuid:
                return 200, {}, self._not_found()
            n = self.add_note("deploybot", inp["body"])
            self.comment_ids[n.id] = inp.get("id") or f"auto-{n.id}"
            return 200, {}, {"data": {"commentCreate": {"success": True, "comment": {"id": self._cid(n)}}}}
        if q.lstrip().startswith("mutation Update"):
            inp = v["input"]
            if "stateId" in inp:
                self.status = inp["stateId"].removeprefix("state-")
            for lid in inp.get("addedLabelIds", []):
                name = lid.removeprefix("lbl-")
                if name not in self.labels:
                    self.labels.append(name)
            return 200, {}, {"data": {"issueUpdate": {"success": True, "issue": {
                "state": {"name": self.status, "type": "started"}}}}}
        if q.lstrip().startswith("query CommentById("):
            if not any(self._cid(n) == v.get("id") for n in self.notes):
                return 200, {}, {"data": None, "errors": [{"message": "Entity not found: Comment", "extensions": {
                    "type": "invalid input", "code": "INVALID_INPUT",
                    "userPresentableMessage": "Could not find referenced Comment."}}]}
            return 200, {}, {"data": {"comment": {"id": v["id"]}}}
        if v.get("id") not in (self.ident, self.issue_uuid):
            return 200, {}, self._not_found()
        if "query Comments" in q:
            notes = sorted(self.notes, key=lambda n: n.created)
            start = int(v["after"].removeprefix("cursor-")) if v.get("after") else 0
            first = min(int(re.search(r"first:\s*(\d+)", q).group(1)), 250)
            page = notes[start:start + first]
            return 200, {}, {"data": {"issue": {"comments": {
                "nodes": [{"id": self._cid(n), "body": n.text, "createdAt": iso_ms(n.created),
                           "user": self._user(n.login)} for n in page],
                "pageInfo": {"hasNextPage": start + first < len(notes),
                             "endCursor": f"cursor-{start + len(page)}"}}}}}
        state = {"name": self.status, "type": "started"}
        if "query States" in q:
            return 200, {}, {"data": {"issue": {"id": self.issue_uuid, "state": state, "team": {"states": {
                "nodes": [{"id": f"state-{s}", "name": s, "type": "started"} for s in self.statuses]}}}}}
        return 200, {}, {"data": {"issue": {
            "id": self.issue_uuid, "identifier": self.ident, "title": self.title,
            "url": f"https://linear.app/acme/issue/{self.ident}/checkout-fix", "description": "Totals.",
            "state": state, "labels": {"nodes": [{"name": n} for n in self.labels]}, "team": {"key": "ENG"}}}}

    @staticmethod
    def _not_found() -> dict:
        return {"data": None, "errors": [{"message": "Entity not found: Issue", "extensions": {
            "type": "invalid input", "code": "INVALID_INPUT",
            "userPresentableMessage": "Could not find referenced Issue."}}]}


def linear_rate_limited(reset_in: float = 1.0, now: float = NOW) -> dict:
    """Arguments for server.fault(): Linear's RATELIMITED answer with its reset header (epoch ms)."""
    return dict(status=400, headers={
        "X-RateLimit-Requests-Limit": "1500", "X-RateLimit-Requests-Remaining": "0",
        "X-RateLimit-Requests-Reset": str(int((now + reset_in) * 1000))},
        body={"errors": [{"message": "Rate limit exceeded", "extensions": {
            "code": "RATELIMITED", "type": "ratelimited",
            "userPresentableMessage": "You have exceeded the rate limit."}}]})


# -- Redmine ------------------------------------------------------------------------------------


class RedmineApp(FakeApp):
    kind = "redmine"
    names = ["New", "In Progress", "Ready for Production", "Deployed", "Closed"]
    admin = False  # whether deploybot's key is an administrator's (GET /users.json needs it)

    def account_id(self, login: str) -> str:
        return str(5 + self.people[login].num)

    def _user(self, login: str, full: bool = False) -> dict:
        p = self.people[login]
        user = {"id": int(self.account_id(login)), "login": login, "admin": login == "deploybot" and self.admin,
                "firstname": p.first, "lastname": p.last, "mail": f"{login}@example.test",
                "created_on": iso_z(BASE_TIME), "updated_on": iso_z(BASE_TIME), "last_login_on": None,
                "passwd_changed_on": None, "twofa_scheme": None}
        if full:
            user["status"] = 1
        return user

    def _login_of(self, uid: str) -> str | None:
        return next((x for x in self.people if self.account_id(x) == uid), None)

    @staticmethod
    def _paged(req: Request, items: list) -> tuple[list, int, int]:
        limit = int(req.query.get("limit") or 25)
        limit = 25 if limit < 1 else min(limit, 100)
        offset = int(req.query.get("offset") or 0)
        return items[offset:offset + limit], offset, limit

    def _like(self, login: str, q: str) -> bool:
        """Redmine's Principal.like: a substring of login or mail, or every word in a name."""
        p, q = self.people[login], q.lower()
        if q in login.lower() or q in f"{login}@example.test":
            return True
        return all(w in p.first.lower() or w in p.last.lower() for w in q.split())

    def route(self, req: Request, base: str) -> tuple[int, dict, Any]:
        p = req.path
        if p == "/users/current.json":
            if not self.authorized(req):
                return 401, {}, ""
            return 200, {}, {"user": {**self._user("deploybot"), "api_key": "x" * 40}}
        if m := re.fullmatch(r"/users/(\d+)\.json", p):
            login = self._login_of(m.group(1))
            if login is None:
                return 404, {}, ""
            return 200, {}, {"user": self._user(login, full=self.admin and self.authorized(req))}
        if p == "/users.json":
            if not self.authorized(req):
                return 401, {}, ""
            if not self.admin:
                return 403, {}, ""
            q = req.query.get("name") or ""
            found = [self._user(x, full=True) for x in sorted(self.people) if not q or self._like(x, q)]
            page, offset, limit = self._paged(req, found)
            return 200, {}, {"users": page, "total_count": len(found), "offset": offset, "limit": limit}
        if p == "/projects/webshop/memberships.json":
            members = [{"id": 100 + x.num, "project": {"id": 1, "name": "Webshop"},
                        "user": {"id": int(self.account_id(x.login)), "name": x.name},
                        "roles": [{"id": 3, "name": "Developer"}]} for x in self.people.values()]
            members.insert(1, {"id": 99, "project": {"id": 1, "name": "Webshop"},
                               "group": {"id": 40, "name": "Reviewers"}, "roles": [{"id": 3, "name": "Developer"}]})
            page, offset, limit = self._paged(req, members)
            return 200, {}, {"memberships": page, "total_count": len(members), "offset": offset, "limit": limit}
        if p == "/projects/webshop.json":
            return 200, {}, {"project": {"id": 1, "identifier": "webshop"}}
        if p == "/issue_statuses.json":
            return 200, {}, {"issue_statuses": [{"id": i + 1, "name": n, "is_closed": n in ("Deployed", "Closed")}
                                                for i, n in enumerate(self.names)]}
        m = re.fullmatch(r"/issues/(\d+)\.json", p)
        if not m or m.group(1) != "7":
            return 404, {}, ""
        if req.method == "PUT" and not self.authorized(req):
            return 403, {}, ""
        if req.method == "PUT":
            issue = req.body["issue"]
            if issue.get("notes"):
                self.add_note("deploybot", issue["notes"])
            if "status_id" in issue:
                target = self.names[int(issue["status_id"]) - 1]
                if target in self.workflow[self.status]:  # like Redmine: a refused move is ignored
                    self.status = target
            return 204, {}, None
        sid = self.names.index(self.status) + 1
        out = {"id": 7, "project": {"id": 1, "name": "Webshop"}, "tracker": {"id": 1, "name": "Bug"},
               "status": {"id": sid, "name": self.status, "is_closed": False},
               "priority": {"id": 2, "name": "Normal"},
               "author": {"id": int(self.account_id("alice")), "name": self.people["alice"].name},
               "subject": self.title, "description": None, "created_on": iso_z(BASE_TIME)}
        if "journals" in req.query.get("include", ""):
            out["journals"] = [  # Redmine orders journals by created_on, then id
                {"id": n.id, "user": {"id": int(self.account_id(n.login)), "name": self.people[n.login].name},
                 "notes": n.text, "created_on": iso_z(n.created), "private_notes": False, "details": []}
                for n in sorted(self.notes, key=lambda n: (n.created, n.id))]
            out["journals"].insert(0, {"id": 1, "user": {"id": int(self.account_id("alice")),
                                                         "name": self.people["alice"].name}, "notes": "",
                                       "created_on": iso_z(BASE_TIME), "private_notes": False,
                                       "details": [{"property": "attr", "name": "status_id",
                                                    "old_value": "2", "new_value": "3"}]})
        return 200, {}, {"issue": out}
