"""GitHub Issues (REST v3). The status is a label with a prefix (default "status:"), so
"ready for production" is the label `status:Ready for Production`; comments are paginated by
the `Link` header; the post-once key is an HTML comment, which GitHub does not render.

Identities: a comment's author is the user's numeric id (logins can be renamed, and a freed login
taken by someone else); the login is shown. A `people:` entry is a login (GET /users/{login})
or a numeric id (GET /user/{id}): all digits always mean an id.
"""

from __future__ import annotations

import re
from datetime import timedelta, timezone
from typing import Any, Mapping
from urllib.parse import parse_qs, quote, urlsplit

from bot.errors import ConfigError, InputError, TrackerError
from bot.models import Account, Comment, Ticket

from backends.trackers import markup
from backends.trackers.base import (HttpTracker, RawComment, json_or_none, only_status, refused_transition,
                                    sort_oldest_first, stays)
from backends.trackers.http import Http, base_url, parse_time, secret

_REPO = r"[\w.-]+/[\w.-]+"
PAGE = 100  # GitHub's maximum per_page
_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:\[bot\])?")


class GitHub(HttpTracker):
    name = "GitHub"

    def __init__(self, http: Http, *, repo: str, web_host: str, status_prefix: str = "status:",
                 statuses: list[str] | None = None) -> None:
        super().__init__(http)
        self.repo = repo
        self.web_host = web_host
        self.prefix = status_prefix
        self.statuses = statuses or []

    def parse_ref(self, text: str) -> str:
        value = (text or "").strip()
        if value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            m = re.fullmatch(rf"/({_REPO})/(?:issues|pull)/([0-9]+)/?", parts.path)
            if parts.netloc != self.web_host or not m:
                raise InputError(f"{value!r} is not a GitHub issue URL on {self.web_host}",
                                 hint="use https://HOST/OWNER/REPO/issues/42, OWNER/REPO#42 or #42")
            return f"{m.group(1)}#{m.group(2)}"
        if m := re.fullmatch(rf"({_REPO})#([0-9]+)", value):
            return f"{m.group(1)}#{m.group(2)}"
        if (m := re.fullmatch(r"#?([0-9]+)", value)) and self.repo:
            return f"{self.repo}#{m.group(1)}"
        raise InputError(f"{value!r} is not a GitHub issue reference",
                         hint=f"use #42 or {self.repo or 'OWNER/REPO'}#42")

    @staticmethod
    def _path(tid: str) -> str:
        repo, number = tid.split("#")
        return f"/repos/{repo}/issues/{number}"

    def _status(self, issue: dict) -> str:
        for label in issue.get("labels") or []:
            name = label["name"] if isinstance(label, dict) else str(label)
            if name.casefold().startswith(self.prefix.casefold()):
                return name[len(self.prefix):].strip()
        return issue.get("state", "")  # no status label: open / closed

    def _issue(self, tid: str) -> dict:
        return self.http.json("GET", self._path(tid), ticket=tid, what="read the issue")

    def get_ticket(self, ticket_id: str) -> Ticket:
        tid = self.parse_ref(ticket_id)
        return self._ticket(tid, self._issue(tid))

    def _ticket(self, tid: str, issue: dict) -> Ticket:
        return Ticket(
            id=tid, title=issue.get("title", ""), status=self._status(issue),
            url=issue.get("html_url", ""),
            labels=[lb["name"] if isinstance(lb, dict) else str(lb) for lb in issue.get("labels") or []],
            description=issue.get("body") or "",
            fields={"state": issue.get("state", "")},
            created_at=parse_time(issue["created_at"]) if issue.get("created_at") else None,
        )

    def _page(self, tid: str, page: int, since: str = ""):
        params: dict[str, Any] = {"per_page": PAGE, "page": page}
        if since:
            params["since"] = since
        return self.http.request("GET", f"{self._path(tid)}/comments", ticket=tid, what="read comments",
                                 params=params)

    def _read_comments(self, ticket_id: str) -> list[RawComment]:
        return self._pages_from(ticket_id, 1)

    def _comments_after(self, ticket_id: str, offset: int) -> list[RawComment]:
        return self._pages_from(ticket_id, offset // PAGE + 1)

    def changes_since(self, ticket_id: str, seen: list[Comment]) -> tuple[Ticket, list[Comment]]:
        """The issue and the comments updated at or after the newest creation time among `seen`
        (the `since` parameter: a time GitHub itself wrote, so no clock skew), concurrently. The
        issue's `comments` count proves none of `seen` was deleted; else a whole read."""
        tid = self.parse_ref(ticket_id)
        if not seen:
            return self.gate_data(tid)
        # a second earlier: GitHub keeps whole seconds
        newest = max(c.created_at for c in seen).astimezone(timezone.utc) - timedelta(seconds=1)
        since = newest.strftime("%Y-%m-%dT%H:%M:%SZ")
        issue, recent = self.http.parallel(lambda: self._issue(tid),
                                           lambda: self._pages_from(tid, 1, since))
        now = {c.id: c for c in seen} | {raw.comment.id: raw.comment for raw in recent}
        if len(now) != issue.get("comments"):  # one was deleted (or came in meanwhile)
            return self.gate_data(tid)
        return self._ticket(tid, issue), [raw.comment for raw in sort_oldest_first(
            [RawComment(c) for c in now.values()])]

    def _pages_from(self, ticket_id: str, start: int, since: str = "") -> list[RawComment]:
        first = self._page(ticket_id, start, since)
        responses = [first]
        last = first.links.get("last", {}).get("url")
        if last:  # `last` names the final page: fetch the rest at once
            count = int(parse_qs(urlsplit(last).query).get("page", ["1"])[0])
            responses += self.http.parallel(*[lambda p=p: self._page(ticket_id, p, since)
                                              for p in range(start + 1, count + 1)])
        else:  # no `last` (some proxies drop it): follow `next`
            nxt = first.links.get("next", {}).get("url")
            while nxt:
                if urlsplit(nxt).netloc != urlsplit(self.http.url).netloc:  # never send the token elsewhere
                    raise TrackerError(f"GitHub sent a next-page link to another host ({urlsplit(nxt).netloc})",
                                       hint="check tracker.url and any proxy in front of GitHub")
                resp = self.http.request("GET", nxt, ticket=ticket_id, what="read comments")
                responses.append(resp)
                nxt = resp.links.get("next", {}).get("url")
        raws, seen = [], set()
        for resp in responses:
            for c in resp.json():
                if c["id"] in seen:
                    continue
                seen.add(c["id"])
                user = c.get("user") or {}
                body = c.get("body") or ""
                raws.append(RawComment(
                    Comment(id=str(c["id"]), author=str(user.get("id", "")), author_name=user.get("login", ""),
                            body=markup.strip_markers(body), created_at=parse_time(c["created_at"])),
                    markup.markers(body),
                ))
        return sort_oldest_first(raws)

    def _post_comment(self, ticket_id: str, markdown: str, key: str) -> None:
        self.http.request("POST", f"{self._path(ticket_id)}/comments", ticket=ticket_id, idempotent=False,
                          what="add a comment", json={"body": markup.with_marker(markdown, key)})

    def transition(self, ticket_id: str, status: str, *, only_from: str = "") -> str:
        tid = self.parse_ref(ticket_id)
        issue = self._issue(tid)
        before = self._status(issue)
        if stays(before, status, only_from):
            return before
        if self.statuses and status.casefold() not in {s.casefold() for s in self.statuses}:
            raise refused_transition(self.name, tid, before, status, self.statuses,
                                     fix="add it to tracker.statuses or use one of those")
        between = before
        for label in issue.get("labels") or []:
            name = label["name"] if isinstance(label, dict) else str(label)
            if name.casefold().startswith(self.prefix.casefold()):
                # 404: already removed (by a retried request whose first answer was lost).
                self.http.request("DELETE", f"{self._path(tid)}/labels/{quote(name, safe='')}",
                                  ticket=tid, write=True, accept=(404,), what=f"remove label {name!r}")
                between = issue.get("state", "")  # no status label now: open / closed
        answers: list[Any] = []

        def send() -> None:
            answers.append(self.http.request(
                "POST", f"{self._path(tid)}/labels", ticket=tid, what="add labels", write=True,
                json={"labels": [f"{self.prefix}{status}"]}))

        self._settle_status(tid, status, between, send)
        if not self._answer_shows(answers, status):  # else the answer proves it: no re-read
            self._moved_or_fail(tid, status, before, hint="another actor changed the labels at the same time; retry")
        return before

    def _answer_shows(self, answers: list[Any], status: str) -> bool:
        """Whether the labels POST answered with the issue's labels, `status` its only status."""
        labels = json_or_none(answers[-1]) if answers else None
        return isinstance(labels, list) and only_status(
            [lb.get("name", "") if isinstance(lb, dict) else str(lb) for lb in labels], self.prefix, status)

    def add_labels(self, ticket_id: str, labels: list[str]) -> None:
        tid = self.parse_ref(ticket_id)
        self.http.request("POST", f"{self._path(tid)}/labels", ticket=tid, what="add labels", write=True,
                          json={"labels": list(labels)})

    # -- identities --------------------------------------------------------------------------

    forbidden_whoami = "the token may lack access to its own user, or the account may be suspended"

    @staticmethod
    def _account(user: dict) -> Account:
        login = str(user.get("login") or "")
        return Account(id=str(user.get("id") or ""), login=login, name=login)

    def current_account(self) -> Account:
        me = self._whoami("GET", "/user") or {}
        if not me.get("id"):
            raise self.credentials_error(None)
        return self._account(me)

    def _resolve(self, ref: str) -> Account:
        hint = "write the person's GitHub login, or their numeric user id, in people:"
        want = ref.removeprefix("@")
        by_id = bool(re.fullmatch(r"[0-9]+", want))
        if by_id:
            path = f"/user/{want}"
        elif _LOGIN.fullmatch(want):
            path = f"/users/{quote(want, safe='')}"
        else:
            raise TrackerError(f"{ref!r} in people: is not a GitHub login or user id "
                               "(display names are never matched)", hint=hint)
        resp = self.http.request("GET", path, accept=(404,), what=f"look up GitHub user {want!r}")
        user = None if resp.status_code == 404 else resp.json()
        if not user or not user.get("id"):
            raise self.unknown_account(ref, fix=hint)
        same = (str(user["id"]) == want) if by_id else (str(user.get("login", "")).casefold() == want.casefold())
        if not same:  # a proxy or a redirect answered for someone else: never guess
            raise self.unknown_account(ref, fix=hint)
        return self._account(user)

    def _check_access(self) -> None:
        if self.repo:
            try:
                self.http.json("GET", f"/repos/{self.repo}", what=f"read repository {self.repo}")
            except TrackerError as exc:
                raise TrackerError(f"GitHub: cannot read repository {self.repo}: {exc.message}",
                                   hint=f"check tracker.repo, and that the token in {self.http.token_env} "
                                        "has access to it (Issues: read and write)") from None


def build(settings: Mapping[str, Any], environ: Mapping[str, str], **seams: Any) -> GitHub:
    url = base_url(settings, "GitHub", default="https://api.github.com")
    repo = str(settings.get("repo", ""))
    if repo and not re.fullmatch(_REPO, repo):
        raise ConfigError(f"GitHub: tracker.repo must be OWNER/REPO, got {repo!r}")
    token = secret(settings, environ, "GitHub")
    host = urlsplit(url).netloc
    web_host = str(settings.get("web_host") or ("github.com" if host == "api.github.com" else host))
    http = Http(
        tracker="GitHub", url=url, settings=settings, secret_values=(token,),
        headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                 "X-GitHub-Api-Version": "2022-11-28"},
        **seams,
    )
    return GitHub(http, repo=repo, web_host=web_host,
                  status_prefix=str(settings.get("status_prefix", "status:")),
                  statuses=list(settings.get("statuses") or []))
