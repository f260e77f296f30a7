"""Linear (GraphQL). Issues are looked up by identifier (ENG-42), statuses are the team's workflow
states, comments are cursor-paged (250 per page). Rate limits arrive as an error with
`extensions.code == "RATELIMITED"` in the body, with the reset in `X-RateLimit-*-Reset` headers.

Linear lets a client choose a new comment's id, so the post-once key is the comment id itself
(a UUID derived from ticket + key): invisible, and a second post with it cannot succeed.

Identities: a comment's author is the user's id (a UUID); the display name is shown. A `people:`
entry is a user id (user(id:)) or the user's display name, Linear's handle, unique within the
workspace (users(filter: {displayName: {eq:}}), exactly one match). Handles can be changed and
a freed one taken, so ids are the safer choice. Comment ids are UUIDs, so comments keep Linear's
createdAt order, with the API's own order among equal times.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any, Mapping
from urllib.parse import urlsplit

import httpx

from bot.errors import InputError, TrackerError
from bot.models import Account, Comment, Ticket

from backends.trackers.base import HttpTracker, RawComment, refused_transition, sort_oldest_first, stays
from backends.trackers.http import Http, base_url, parse_time, parse_wait, secret

_ID = re.compile(r"([A-Za-z][A-Za-z0-9]*)-([0-9]+)")
PAGE = 250  # Linear's maximum `first`

ISSUE_Q = """query Issue($id: String!) {
  issue(id: $id) { id identifier title url description
    state { name type } labels(first: 100) { nodes { name } } team { key } } }"""

COMMENTS_Q = """query Comments($id: String!, $after: String) {
  issue(id: $id) { comments(first: %d, after: $after) {
    nodes { id body createdAt user { id name displayName } }
    pageInfo { hasNextPage endCursor } } } }""" % PAGE

STATES_Q = """query States($id: String!) {
  issue(id: $id) { id state { name } team { states(first: 250) { nodes { id name type } } } } }"""

LABELS_Q = """query Labels($names: [String!]) {
  issueLabels(first: 250, filter: { name: { in: $names } }) { nodes { id name } } }"""

CREATE_M = """mutation Comment($input: CommentCreateInput!) {
  commentCreate(input: $input) { success comment { id } } }"""

COMMENT_Q = """query CommentById($id: String!) { comment(id: $id) { id } }"""

VIEWER_Q = "query Viewer { viewer { id name displayName } }"

USER_Q = """query User($id: String!) { user(id: $id) { id name displayName } }"""

USERS_Q = """query Users($handle: String!) {
  users(first: 2, filter: { displayName: { eq: $handle } }) { nodes { id name displayName } } }"""

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HANDLE = re.compile(r"[^\s@]\S{0,99}")

UPDATE_M = """mutation Update($id: String!, $input: IssueUpdateInput!) {
  issueUpdate(id: $id, input: $input) { success issue { state { name } } } }"""


def _rate_limited(resp: httpx.Response, now: float) -> float | None:
    if "json" not in resp.headers.get("content-type", ""):
        return None
    try:
        errors = resp.json().get("errors") or []
    except (ValueError, AttributeError):
        return None
    if not any((e.get("extensions") or {}).get("code") == "RATELIMITED" for e in errors):
        return None
    for name in ("retry-after", "x-ratelimit-requests-reset", "x-ratelimit-complexity-reset"):
        wait = parse_wait(resp.headers.get(name), now)
        if wait is not None:
            return wait
    return 1.0


class Linear(HttpTracker):
    name = "Linear"

    def __init__(self, http: Http, *, team: str = "", web_host: str = "linear.app") -> None:
        super().__init__(http)
        self.team = team.upper()
        self.web_host = web_host
        self._uuids: dict[str, str] = {}  # identifier -> the issue's UUID

    def parse_ref(self, text: str) -> str:
        value = (text or "").strip()
        if value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            m = re.search(r"/issue/([A-Za-z][A-Za-z0-9]*-\d+)(?:/|$)", parts.path)
            if parts.netloc != self.web_host or not m:
                raise InputError(f"{value!r} is not a Linear issue URL", hint="use the identifier, e.g. ENG-42")
            return m.group(1).upper()
        if self.team and re.fullmatch(r"#?[0-9]+", value):
            return f"{self.team}-{value.lstrip('#')}"
        if _ID.fullmatch(value):
            return value.upper()
        raise InputError(f"{value!r} is not a Linear issue identifier",
                         hint=f"use TEAM-NUMBER, e.g. {self.team or 'ENG'}-42")

    def _gql(self, query: str, variables: dict, *, ticket: str = "", what: str = "",
             idempotent: bool = True, write: bool | None = None, missing_ok: bool = False) -> dict:
        """The `data` of a GraphQL answer; TrackerError for its errors (missing_ok: a "not found"
        error gives an empty dict instead)."""
        resp = self.http.request("POST", "/graphql", json={"query": query, "variables": variables},
                                 ticket=ticket, what=what, idempotent=idempotent, write=write,
                                 accept=(400,))
        body = resp.json()
        errors = body.get("errors") or []
        if errors:
            if missing_ok and all(_not_found(e) for e in errors):
                return {}
            raise self._graphql_error(errors, ticket, what)
        return body.get("data") or {}

    def _graphql_error(self, errors: list[dict], ticket: str, what: str) -> TrackerError:
        first = errors[0]
        ext = first.get("extensions") or {}
        message = self.http.scrub(ext.get("userPresentableMessage") or first.get("message", "error"))
        text = f"{first.get('message', '')} {message}".lower()
        if ext.get("code") == "AUTHENTICATION_ERROR" or "authenticat" in text:
            return self.credentials_error(None)
        if ticket and ("not found" in text or "could not find" in text):
            return TrackerError(f"Linear has no issue {ticket}", hint="check the issue identifier")
        return TrackerError(f"Linear refused to {what or 'answer'}"
                            + (f" (issue {ticket})" if ticket else "") + f": {message}",
                            hint="see Linear's message above")

    def _issue(self, ident: str) -> dict:
        issue = self._gql(ISSUE_Q, {"id": ident}, ticket=ident, what="read the issue").get("issue")
        if not issue:
            raise TrackerError(f"Linear has no issue {ident}", hint="check the issue identifier")
        self._uuids[ident] = issue["id"]
        return issue

    def _uuid(self, ident: str) -> str:
        """The issue's id (a UUID: it never changes), read once; comments are posted to it."""
        return self._uuids.get(ident) or self._issue(ident)["id"]

    def get_ticket(self, ticket_id: str) -> Ticket:
        ident = self.parse_ref(ticket_id)
        issue = self._issue(ident)
        return Ticket(
            id=issue.get("identifier", ident), title=issue.get("title", ""),
            status=(issue.get("state") or {}).get("name", ""), url=issue.get("url", ""),
            labels=[n["name"] for n in (issue.get("labels") or {}).get("nodes", [])],
            description=issue.get("description") or "",
            fields={"state_type": (issue.get("state") or {}).get("type", "")},
        )

    def _read_comments(self, ticket_id: str) -> list[RawComment]:
        raws, after = [], None
        while True:  # cursor paging cannot be parallelised; 250 a page keeps it short
            data = self._gql(COMMENTS_Q, {"id": ticket_id, "after": after}, ticket=ticket_id,
                             what="read comments")
            issue = data.get("issue")
            if not issue:
                raise TrackerError(f"Linear has no issue {ticket_id}", hint="check the issue identifier")
            conn = issue["comments"]
            for c in conn.get("nodes") or []:
                user = c.get("user") or {}
                raws.append(RawComment(
                    Comment(id=c["id"], author=user.get("id", ""),
                            author_name=user.get("displayName") or user.get("name", ""),
                            body=c.get("body") or "", created_at=parse_time(c["createdAt"])),
                    {c["id"]},
                ))
            page = conn.get("pageInfo") or {}
            if not page.get("hasNextPage"):
                return sort_oldest_first(raws, numeric_ids=False)
            after = page.get("endCursor")

    def _key_token(self, ticket_id: str, key: str) -> str:
        digest = hashlib.sha256(f"deploybot:{ticket_id}:{key}".encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))  # Linear wants v4-shaped UUIDs

    def _has_key(self, ticket_id: str, token: str) -> bool:
        """The key is the comment's own id: ask for that comment, one request."""
        found = self._gql(COMMENT_Q, {"id": token}, what="look for an earlier comment",
                          missing_ok=True).get("comment")
        return bool(found and found.get("id") == token)

    def _post_comment(self, ticket_id: str, markdown: str, key: str) -> None:
        issue_id = self._uuid(ticket_id)
        data = self._gql(CREATE_M, {"input": {"id": key, "issueId": issue_id, "body": markdown}},
                         ticket=ticket_id, what="add a comment", idempotent=False)
        if not (data.get("commentCreate") or {}).get("success"):
            raise TrackerError(f"Linear did not add the comment to {ticket_id}", hint="retry; see Linear's status")

    def transition(self, ticket_id: str, status: str, *, only_from: str = "") -> str:
        ident = self.parse_ref(ticket_id)
        issue = self._gql(STATES_Q, {"id": ident}, ticket=ident, what="list workflow states").get("issue")
        if not issue:
            raise TrackerError(f"Linear has no issue {ident}", hint="check the issue identifier")
        before = (issue.get("state") or {}).get("name", "")
        if stays(before, status, only_from):
            return before
        states = ((issue.get("team") or {}).get("states") or {}).get("nodes") or []
        match = [s for s in states if s["name"].casefold() == status.casefold()]
        if not match:
            raise refused_transition(self.name, ident, before, status, [s["name"] for s in states],
                                     fix="add that state to the team's workflow or use one of those")
        answers: list[dict] = []
        self._settle_status(ident, status, before, lambda: answers.append(self._gql(
            UPDATE_M, {"id": issue["id"], "input": {"stateId": match[0]["id"]}}, ticket=ident,
            write=True, what=f"move to {status!r}")))
        now = ((((answers[-1] if answers else {}).get("issueUpdate") or {}).get("issue") or {})
               .get("state") or {}).get("name", "")
        if now.casefold() != status.casefold():  # else the answer proves it: no re-read
            self._moved_or_fail(ident, status, before, hint="an automation may have moved it back")
        return before

    def add_labels(self, ticket_id: str, labels: list[str]) -> None:
        ident = self.parse_ref(ticket_id)
        found = self._gql(LABELS_Q, {"names": list(labels)}, what="find labels")["issueLabels"]["nodes"]
        ids = {n["name"].casefold(): n["id"] for n in found}
        missing = [name for name in labels if name.casefold() not in ids]
        if missing:
            raise TrackerError(f"Linear has no label(s) {missing!r} (issue {ident})",
                               hint="create them in Linear's settings first")
        issue_id = self._issue(ident)["id"]
        self._gql(UPDATE_M, {"id": issue_id, "input": {"addedLabelIds": list(ids.values())}},
                  ticket=ident, write=True, what="add labels")

    # -- identities --------------------------------------------------------------------------

    @staticmethod
    def _account(user: dict) -> Account:
        handle = str(user.get("displayName") or "")
        return Account(id=str(user.get("id") or ""), login=handle, name=handle or str(user.get("name") or ""))

    def current_account(self) -> Account:
        viewer = self._gql(VIEWER_Q, {}, what="identify deploybot's own account").get("viewer")
        if not viewer or not viewer.get("id"):
            raise self.credentials_error(None)
        return self._account(viewer)

    def _resolve(self, ref: str) -> Account:
        hint = ("write the person's Linear user id (safest: handles can be changed) or their "
                "display name (handle) in people:")
        if _UUID.fullmatch(ref):
            user = self._gql(USER_Q, {"id": ref}, what=f"look up Linear user {ref}", missing_ok=True).get("user")
            if not user or user.get("id") != ref:
                raise self.unknown_account(ref, fix=hint)
            return self._account(user)
        handle = ref.removeprefix("@")
        if not _HANDLE.fullmatch(handle):
            raise TrackerError(f"{ref!r} in people: is not a Linear user id or handle "
                               "(full names are never matched)", hint=hint)
        nodes = (self._gql(USERS_Q, {"handle": handle}, what=f"look up Linear user {handle!r}")
                 .get("users") or {}).get("nodes") or []
        match = [u for u in nodes if u.get("displayName") == handle]
        if len(match) != 1 or len(nodes) != 1:  # none, or not unique: never guess
            raise self.unknown_account(ref, fix=hint)
        return self._account(match[0])


def _not_found(error: dict) -> bool:
    ext = error.get("extensions") or {}
    text = f"{error.get('message', '')} {ext.get('userPresentableMessage', '')}".lower()
    return "not found" in text or "could not find" in text


def build(settings: Mapping[str, Any], environ: Mapping[str, str], **seams: Any) -> Linear:
    url = base_url(settings, "Linear", default="https://api.linear.app")
    token = secret(settings, environ, "Linear")
    # Personal API keys go bare in Authorization; OAuth access tokens as Bearer.
    auth = token if token.startswith("lin_api_") else f"Bearer {token}"
    http = Http(tracker="Linear", url=url, headers={"Authorization": auth}, settings=settings,
                secret_values=(token,), body_rate_limit=_rate_limited, **seams)
    return Linear(http, team=str(settings.get("team", "")),
                  web_host=str(settings.get("web_host", "linear.app")))
