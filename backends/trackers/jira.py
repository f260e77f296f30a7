"""Jira Cloud (REST v3, ADF bodies, email + API token) and Jira Data Center (REST v2, wiki
markup, personal access token). One class: the two differ in API version, body format, auth and
how users are identified (accountId vs name).

The post-once key is stored as a comment property ("deploybot" -> {"key": ...}), set in the same
request that creates the comment: invisible to people, on both flavours. The comment pages
(GET issue/{key}/comment) document only `expand=renderedBody`, so the key is looked up with the
documented property reads, and only on deploybot's own comments: Cloud reads them in bulk
(POST /rest/api/3/comment/list?expand=properties, "Get comments by IDs"), Data Center one by one
(GET /rest/api/2/comment/{id}/properties/deploybot, newest first).

Identities: Cloud's stable id is the accountId (a `people:` entry is an accountId, looked up
with GET /rest/api/3/user?accountId=). Data Center's is the user key, which stays when a user is
renamed (the username does not); a `people:` entry is a username or a key
(GET /rest/api/2/user?username=, then ?key=). Display names are only shown.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, urlsplit

from bot.errors import InputError, TrackerError
from bot.models import Account, Comment, Ticket

from backends.trackers import markup
from backends.trackers.base import HttpTracker, RawComment, refused_transition, sort_oldest_first, stays
from backends.trackers.http import Http, base_url, parse_time, secret

_KEY = re.compile(r"([A-Za-z][A-Za-z0-9_]*)-([0-9]+)")
PROPERTY = "deploybot"
PAGE = 100  # Jira caps comment pages (Cloud serves up to 100 per page in practice)
IDS_MAX = 1000  # "Get comments by IDs" takes at most 1000 ids a request
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:_-]{0,127}")  # 5b10a2844c20165700ede21g, 557058:f5...
_DC_USER = re.compile(r"[^\s/?#&]{1,255}")  # usernames may hold @ . - _ and more; never spaces
_FIELDS = "summary,status,labels,description,issuetype,priority,created,updated"


@dataclass(frozen=True)
class Snapshot:
    """What a read of a ticket saw, enough to prove a later read of only the newest page is
    whole: the comments (a digest), the issue's `updated` read with them, and how many comments
    the newest page held (read concurrently with the issue, so possibly just before it)."""

    digest: str
    updated: str
    newest: int
    keys: tuple[tuple[str, frozenset[str]], ...] = ()  # comment id -> the keys its text carries


def digest(comments: list[Comment]) -> str:
    return hashlib.sha256(repr([(c.id, c.author, c.author_name, c.body, c.created_at.isoformat())
                                for c in comments]).encode()).hexdigest()


class Jira(HttpTracker):
    def __init__(self, http: Http, url: str, *, cloud: bool, project: str = "") -> None:
        super().__init__(http)
        self.url = url
        self.cloud = cloud
        self.name = "Jira Cloud" if cloud else "Jira Data Center"
        self.api = "/rest/api/3" if cloud else "/rest/api/2"
        self.project = project.upper()
        self._me = ""  # deploybot's own account id, read once: whose comments may carry a key
        # ticket -> (newest comment id, deploybot's comment ids) of the last whole read
        self._mine_at_read: dict[str, tuple[int, tuple[str, ...]]] = {}
        self._snapshots: dict[str, Snapshot] = {}  # ticket -> its last gate read (changes_since)

    # -- references --------------------------------------------------------------------------

    def parse_ref(self, text: str) -> str:
        value = (text or "").strip()
        if value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            if parts.netloc != urlsplit(self.url).netloc:
                raise InputError(f"{value!r} is not on this Jira ({self.url})",
                                 hint="use the issue key, e.g. PROJ-42")
            keys = parse_qs(parts.query).get("selectedIssue", []) + [parts.path.rstrip("/").rsplit("/", 1)[-1]]
            for candidate in keys:
                if _KEY.fullmatch(candidate):
                    return candidate.upper()
            raise InputError(f"no Jira issue key in {value!r}", hint="use .../browse/PROJ-42 or PROJ-42")
        if self.project and re.fullmatch(r"#?[0-9]+", value):
            return f"{self.project}-{value.lstrip('#')}"
        if _KEY.fullmatch(value):
            return value.upper()
        raise InputError(f"{value!r} is not a Jira issue key",
                         hint=f"use PROJECT-NUMBER, e.g. {self.project or 'PROJ'}-42")

    # -- reading -----------------------------------------------------------------------------

    def get_ticket(self, ticket_id: str) -> Ticket:
        key = self.parse_ref(ticket_id)
        return self._ticket(key, self._issue(key))

    def _issue(self, key: str) -> dict:
        return self.http.json("GET", f"{self.api}/issue/{key}", ticket=key, what="read the issue",
                              params={"fields": _FIELDS}) or {}

    def _ticket(self, key: str, data: dict) -> Ticket:
        fields = data.get("fields") or {}
        description = fields.get("description")
        return Ticket(
            id=data.get("key", key),
            title=fields.get("summary") or "",
            status=(fields.get("status") or {}).get("name", ""),
            url=f"{self.url}/browse/{data.get('key', key)}",
            labels=list(fields.get("labels") or []),
            description=markup.adf_to_text(description) if self.cloud else markup.wiki_to_text(description or ""),
            fields={k: str(fields[k].get("name")) for k in ("issuetype", "priority")
                    if isinstance(fields.get(k), dict)},
            created_at=parse_time(fields["created"]) if fields.get("created") else None,
        )

    def _page(self, key: str, start: int) -> dict:
        return self.http.json(
            "GET", f"{self.api}/issue/{key}/comment", ticket=key, what="read comments",
            params={"startAt": start, "maxResults": PAGE, "orderBy": "created"},
        )

    def _newest(self, key: str, start: int) -> dict:
        return self.http.json(
            "GET", f"{self.api}/issue/{key}/comment", ticket=key, what="read the newest comments",
            params={"startAt": start, "maxResults": PAGE, "orderBy": "-created"},
        )

    def _read_comments(self, ticket_id: str) -> list[RawComment]:
        return self._pages(ticket_id, self._page(ticket_id, 0), self._page)[0]

    def _pages(self, key: str, first: dict, fetch: Callable[[str, int], dict]) -> tuple[list[RawComment], bool]:
        """Every comment, `first` being the first page: the rest at once (the total is known).
        Also whether the pages agree (the same total, that many comments): not when comments
        came or went between the pages."""
        pages = [first]
        got = len(first.get("comments") or [])
        total = int(first.get("total", got))
        size = int(first.get("maxResults") or PAGE) or PAGE
        if got < total:
            starts = [got + n * size for n in range(math.ceil((total - got) / size))]
            pages += self.http.parallel(*[lambda s=s: fetch(key, s) for s in starts])
        seen: set[str] = set()
        raws = []
        for page in pages:
            for c in page.get("comments") or []:
                if c["id"] in seen:  # a comment added between pages shifts the offsets
                    continue
                seen.add(c["id"])
                raws.append(self._raw(c))
        agree = len(raws) == total and all(int(p.get("total", -1)) == total for p in pages)
        return sort_oldest_first(raws), agree

    # -- the gate's reads --------------------------------------------------------------------

    def gate_data(self, ticket_id: str) -> tuple[Ticket, list[Comment]]:
        """The issue and the newest page at once, then the older pages, once the issue answered:
        a change to those after their read moves the issue's `updated` past the one kept. The
        newest page may be read just before the issue: the re-check reads it again anyway."""
        key = self.parse_ref(ticket_id)
        issue, first = self.http.parallel(lambda: self._issue(key), lambda: self._newest(key, 0))
        return self._whole(key, issue, first)

    def _whole(self, key: str, issue: dict, first: dict) -> tuple[Ticket, list[Comment]]:
        raws, agree = self._pages(key, first, self._newest)
        updated = str((issue.get("fields") or {}).get("updated") or "")
        return self._ticket(key, issue), self._keep(key, raws, updated if agree else "", first)

    def _keep(self, key: str, raws: list[RawComment], updated: str, first: dict) -> list[Comment]:
        """Remember a read that proves every comment: for the next re-check and, as after every
        whole read, for the post-once check."""
        self._saw_all(key, raws)
        comments = [raw.comment for raw in raws]
        with self._last_read_lock:
            if updated:
                self._snapshots[key] = Snapshot(digest(comments), updated, len(first.get("comments") or []),
                                                tuple((r.comment.id, frozenset(r.keys)) for r in raws if r.keys))
            else:  # nothing to prove the next read with
                self._snapshots.pop(key, None)
        return comments

    def changes_since(self, ticket_id: str, seen: list[Comment]) -> tuple[Ticket, list[Comment]]:
        """The issue and the newest page at once. When the issue's `updated` is the one read with
        `seen` (Jira's comment manager sets it on every comment created or edited -- not on a
        deletion, hence the total -- and every field change moves it too), no
        comment was added or edited since: the page's comments replace their older copies and
        its total proves none was deleted. Anything else (a change, `seen` not from this
        process's last read of the ticket, a deletion): the older pages too, a whole read."""
        key = self.parse_ref(ticket_id)
        issue, first = self.http.parallel(lambda: self._issue(key), lambda: self._newest(key, 0))
        with self._last_read_lock:
            known = self._snapshots.get(key)
        raws = self._unchanged(known, seen, issue, first)
        if known is None or raws is None:
            return self._whole(key, issue, first)
        return self._ticket(key, issue), self._keep(key, raws, known.updated, first)

    def _unchanged(self, known: Snapshot | None, seen: list[Comment], issue: dict,
                   first: dict) -> list[RawComment] | None:
        """`seen` with the newest page's copies, when that is provably what a whole read says."""
        updated = str((issue.get("fields") or {}).get("updated") or "")
        if known is None or not updated or updated != known.updated or digest(seen) != known.digest:
            return None
        fresh = [self._raw(c) for c in first.get("comments") or []]
        on_page = {raw.comment.id for raw in fresh}
        # the comments read alongside the issue last time may have changed just before it: read again
        read_with_issue = sorted(seen, key=lambda c: int(c.id))[max(0, len(seen) - known.newest):]
        if any(c.id not in on_page for c in read_with_issue):
            return None
        keys = dict(known.keys)
        now = ({c.id: RawComment(c, set(keys.get(c.id, ()))) for c in seen}
               | {raw.comment.id: raw for raw in fresh})
        if int(first.get("total", -1)) != len(now):  # one was deleted
            return None
        return sort_oldest_first(list(now.values()))

    def _raw(self, c: dict) -> RawComment:
        author = c.get("author") or {}
        body = c.get("body")
        text = markup.adf_to_text(body) if isinstance(body, dict) else markup.wiki_to_text(body or "")
        return RawComment(
            Comment(id=str(c["id"]), author=self._stable_id(author),
                    author_name=author.get("displayName", ""),
                    body=markup.strip_markers(text),
                    created_at=parse_time(c["created"])),
            markup.markers(text),
        )

    # -- post-once keys ----------------------------------------------------------------------

    def _saw_all(self, ticket_id: str, raws: list[RawComment]) -> list[RawComment]:
        raws = super()._saw_all(ticket_id, raws)
        if self._me and raws:
            mine = tuple(r.comment.id for r in raws if r.comment.author == self._me)
            with self._last_read_lock:
                self._mine_at_read[ticket_id] = (max(int(r.comment.id) for r in raws), mine)
        return raws

    def _has_key(self, ticket_id: str, token: str) -> bool:
        """After a whole read (the checklist's, the re-check's): the newest comments down to
        that read's newest (orderBy=-created, one page as a rule), then the properties of
        deploybot's comments only (those the read saw and those since). Else every comment."""
        with self._last_read_lock:
            last, seen = self._last_read.get(ticket_id), self._mine_at_read.get(ticket_id)
        if last is not None and seen is not None and self._me:
            tail = self._newest_down_to(ticket_id, seen[0])
            if tail is not None:
                if token in last.keys or any(token in raw.keys for raw in tail):
                    return True
                ids = list(dict.fromkeys([*seen[1], *(raw.comment.id for raw in tail
                                                      if raw.comment.author == self._me)]))
                return self._key_among(ids, token)
        return self._key_in_every_comment(ticket_id, token)

    def _newest_down_to(self, ticket_id: str, newest_id: int, pages: int = 3) -> list[RawComment] | None:
        """The comments newer than `newest_id` and at least one not newer (proof that the page
        reaches back); None when `pages` pages do not reach back."""
        raws: list[RawComment] = []
        for n in range(pages):
            page = self._newest(ticket_id, n * PAGE)
            got = [self._raw(c) for c in page.get("comments") or []]
            raws += got
            if any(int(raw.comment.id) <= newest_id for raw in got):
                return raws
            if not got or n * PAGE + len(got) >= int(page.get("total", 0)):
                return None  # every comment the read saw is gone: nothing reaches back
        return None

    def _key_among(self, ids: list[str], token: str) -> bool:
        if not ids:
            return False
        if self.cloud:
            return token in self._keys_in_bulk(ids)
        return self._key_one_by_one(list(reversed(ids)), token)

    def _key_in_every_comment(self, ticket_id: str, token: str) -> bool:
        raws = self._read_comments(ticket_id)
        if any(token in raw.keys for raw in raws):
            return True
        if not self._me:
            self._me = self.current_account().id
        return self._key_among([raw.comment.id for raw in raws if raw.comment.author == self._me], token)

    def _keys_in_bulk(self, ids: list[str]) -> set[str]:
        """Cloud: the deploybot property of these comments, through "Get comments by IDs"; a
        page that leaves ids out (the answer is paginated) is followed by one for the rest."""
        keys: set[str] = set()
        todo = list(ids)
        while todo:
            batch, todo = todo[:IDS_MAX], todo[IDS_MAX:]
            data = self.http.json("POST", f"{self.api}/comment/list", params={"expand": "properties"},
                                  json={"ids": [int(i) for i in batch]}, what="read comment properties")
            values = (data or {}).get("values") or []
            for c in values:
                keys |= {str((p.get("value") or {}).get("key")) for p in c.get("properties") or []
                         if p.get("key") == PROPERTY}
            seen = {str(c.get("id")) for c in values}
            rest = [i for i in batch if i not in seen]
            if values and len(rest) < len(batch) and rest:  # deleted ones never come: stop then
                todo = rest + todo
        return keys

    def _key_one_by_one(self, ids: list[str], token: str) -> bool:
        """Data Center: GET each comment's deploybot property, a few at once, newest first."""
        for start in range(0, len(ids), 8):
            found = self.http.parallel(*[lambda cid=cid: self._property_key(cid) for cid in ids[start:start + 8]])
            if token in found:
                return True
        return False

    def _property_key(self, comment_id: str) -> str | None:
        resp = self.http.request("GET", f"{self.api}/comment/{comment_id}/properties/{PROPERTY}",
                                 accept=(404,), what="read a comment property")
        if resp.status_code == 404:  # no such property: not a comment deploybot keyed
            return None
        return str(((resp.json() or {}).get("value") or {}).get("key"))

    # -- writing -----------------------------------------------------------------------------

    def _post_comment(self, ticket_id: str, markdown: str, key: str) -> None:
        body: Any = markup.markdown_to_adf(markdown) if self.cloud else markup.markdown_to_wiki(markdown)
        self.http.request(
            "POST", f"{self.api}/issue/{ticket_id}/comment", ticket=ticket_id, idempotent=False,
            what="add a comment",
            json={"body": body, "properties": [{"key": PROPERTY, "value": {"key": key}}]},
        )

    def transition(self, ticket_id: str, status: str, *, only_from: str = "") -> str:
        key = self.parse_ref(ticket_id)
        # the status and the transitions offered from it, in one request
        data = self.http.json("GET", f"{self.api}/issue/{key}", ticket=key,
                              what="read the status and its workflow transitions",
                              params={"fields": "status", "expand": "transitions"})
        before = ((data.get("fields") or {}).get("status") or {}).get("name", "")
        if stays(before, status, only_from):
            return before
        options = data.get("transitions") or []
        match = [t for t in options if (t.get("to") or {}).get("name", "").casefold() == status.casefold()]
        match = match or [t for t in options if t.get("name", "").casefold() == status.casefold()]
        if not match:
            raise refused_transition(
                self.name, key, before, status,
                [(t.get("to") or {}).get("name", t.get("name", "")) for t in options],
                fix="add that transition to the project's workflow (or give the bot's user the "
                    "permission), or move the issue by hand",
            )
        target = (match[0].get("to") or {}).get("name", status)
        # Not idempotent: once made, the same transition id is no longer offered from the new status.
        self._settle_status(key, target, before, lambda: self.http.request(
            "POST", f"{self.api}/issue/{key}/transitions", ticket=key, idempotent=False,
            what=f"move to {status!r}", json={"transition": {"id": str(match[0]["id"])}}))
        self._moved_or_fail(key, target, before,
                            hint="a workflow validator or post function may have refused it")
        return before

    def add_labels(self, ticket_id: str, labels: list[str]) -> None:
        key = self.parse_ref(ticket_id)
        bad = [label for label in labels if not label or re.search(r"\s", label)]
        if bad:
            raise InputError(f"Jira labels cannot be empty or contain spaces: {bad!r}")
        self.http.request("PUT", f"{self.api}/issue/{key}", ticket=key, what="add labels", write=True,
                          json={"update": {"labels": [{"add": label} for label in labels]}})

    # -- identities --------------------------------------------------------------------------

    forbidden_whoami = ("the account may be deactivated, or Jira asks for a CAPTCHA after failed "
                        "logins (log in once in a browser)")

    def _stable_id(self, user: dict) -> str:
        """Cloud: accountId. Data Center: the user key (kept across renames), the username only
        when an old Jira sends no key."""
        if self.cloud:
            return str(user.get("accountId") or "")
        return str(user.get("key") or user.get("name") or "")

    def _account(self, user: dict) -> Account:
        uid = self._stable_id(user)
        login = uid if self.cloud else str(user.get("name") or uid)
        return Account(id=uid, login=login, name=str(user.get("displayName") or login))

    def current_account(self) -> Account:
        me = self._whoami("GET", f"{self.api}/myself") or {}
        if not self._stable_id(me):
            raise self.credentials_error(None)
        account = self._account(me)
        self._me = account.id  # the post-once check needs it: no second request for it
        return account

    def _check_access(self) -> None:
        if self.project:
            self.http.json("GET", f"{self.api}/project/{self.project}", what=f"read project {self.project}")

    def _user(self, **params: str) -> dict | None:
        resp = self.http.request("GET", f"{self.api}/user", params=params, accept=(400, 404),
                                 what="look up a user")
        return None if resp.status_code in (400, 404) else (resp.json() or None)

    def _resolve(self, ref: str) -> Account:
        if self.cloud:
            hint = ("Jira Cloud names people by accountId: write the id from the person's profile "
                    "URL (…/jira/people/ACCOUNTID)")
            if not _ACCOUNT_ID.fullmatch(ref):
                raise TrackerError(f"{ref!r} in people: is not a Jira Cloud accountId", hint=hint)
            user = self._user(accountId=ref)
            if user is None or user.get("accountId") != ref:
                raise self.unknown_account(ref, fix=hint)
            return self._account(user)
        hint = "write the person's Jira username (or user key) in people:"
        if not _DC_USER.fullmatch(ref):
            raise TrackerError(f"{ref!r} in people: is not a Jira username or user key", hint=hint)
        user = self._user(username=ref)
        if user is None or str(user.get("name", "")).casefold() != ref.casefold():
            user = self._user(key=ref)
            if user is not None and str(user.get("key", "")) != ref:
                user = None
        if user is None or not self._stable_id(user):
            raise self.unknown_account(ref, fix=hint)
        return self._account(user)


def _build(settings: Mapping[str, Any], environ: Mapping[str, str], cloud: bool, **seams: Any) -> Jira:
    name = "Jira Cloud" if cloud else "Jira Data Center"
    url = base_url(settings, name)
    token = secret(settings, environ, name)
    if cloud:  # basic auth: account email + API token
        email = secret(settings, environ, name, key="email_env")
        auth = "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()
    else:  # Data Center personal access token
        auth = f"Bearer {token}"
    http = Http(tracker=name, url=url, headers={"Authorization": auth}, settings=settings,
                secret_values=(token, auth), **seams)
    return Jira(http, url, cloud=cloud, project=str(settings.get("project", "")))


def build_cloud(settings: Mapping[str, Any], environ: Mapping[str, str], **seams: Any) -> Jira:
    return _build(settings, environ, cloud=True, **seams)


def build_dc(settings: Mapping[str, Any], environ: Mapping[str, str], **seams: Any) -> Jira:
    return _build(settings, environ, cloud=False, **seams)


build = build_cloud
