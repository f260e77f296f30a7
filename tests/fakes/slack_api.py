"""A local fake of the Slack Web API, plus signed requests to send to a Bolt app over HTTP.

FakeSlack is an HTTP server on 127.0.0.1 that records every call and answers like Slack:
auth.test, chat.postMessage (with ts, metadata), chat.update, chat.postEphemeral,
chat.getPermalink, views.open, views.publish, conversations.info, conversations.replies and
conversations.history (metadata only with include_all_metadata), usergroups.users.list,
apps.connections.open. It keeps the messages it was sent, updated in place, so a test can read a
thread as people see it. It also takes response_url posts (under /hooks/) and keeps them.

With `limits=FakeLimits()` it enforces Slack's rate limits as documented
(api.slack.com/apis/rate-limits): chat.update Tier 3 (50 per minute, workspace-wide, with some
burst), chat.postMessage about 1 per second per channel (short bursts); over the limit the answer
is HTTP 429 with a Retry-After header (whole seconds) and `{"ok": false, "error": "ratelimited"}`.
`storm(seconds)` answers 429 to every call of the given methods for that long.

SlackRequests builds slash commands, mentions and button clicks the way Slack sends them, signed
with the signing secret (`v0=` HMAC-SHA256 of `v0:{timestamp}:{body}`).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx


def fake_token(kind: str, name: str) -> str:
    """An obviously fake Slack token for the tests: `kind` "bot" or "app" gives the prefix the
    front end checks (xoxb-/xapp-), `name` says which test it belongs to. Made here rather than
    written out, so no test file carries a token-shaped literal."""
    prefix = {"bot": "xoxb", "app": "xapp"}[kind]
    return f"{prefix}-fake-{name}"


@dataclass
class Call:
    method: str  # "chat.postMessage"
    params: dict[str, Any]
    token: str | None
    at: float
    status: int = 200  # 429 when rate-limited


@dataclass(frozen=True)
class FakeLimits:
    """Slack's documented limits (the burst sizes are the fake's own, Slack does not say)."""

    updates_per_minute: float = 50.0
    update_burst: int = 20
    posts_per_second: float = 1.0
    post_burst: int = 5


class _Bucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, float(burst), now

    def take(self, now: float) -> float:
        """0 when a call may go (and takes it), else the seconds until one may."""
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict]
    thread_ts: str | None = None
    updates: int = 0
    history: list[str] = field(default_factory=list)  # every text it showed, oldest first
    metadata: dict | None = None  # {"event_type": …, "event_payload": {…}}

    @property
    def everything(self) -> str:
        """Text and block text, as one string to search in."""
        return self.text + "\n" + json.dumps(self.blocks, ensure_ascii=False)

    def buttons(self) -> dict[str, dict]:
        """action_id -> button element."""
        return {e["action_id"]: e for b in self.blocks if b.get("type") == "actions"
                for e in b["elements"]}


class FakeSlack:
    """`with FakeSlack() as slack:` -> slack.api_url for WebClient(base_url=...)."""

    def __init__(self, *, bot_token: str = "xoxb-test", app_token: str = "xapp-test-token",
                 channels: dict[str, str] | None = None,
                 usergroups: dict[str, list[str]] | None = None,
                 socket_url: str | None = None,
                 users: dict[str, dict] | None = None,
                 limits: FakeLimits | None = None,
                 not_in: set[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bot_token, self.app_token = bot_token, app_token
        self.channels = channels if channels is not None else {"C0STANDUP": "standup"}
        self.usergroups = usergroups or {}
        self.users = users or {}  # user id -> {"name":…, "real_name":…, "deleted": bool}
        self.socket_url = socket_url
        self.limits = limits
        self.clock = clock  # what the rate limits count in (a manual clock in unit tests)
        self.not_in = not_in or set()  # channel ids the bot is not a member of
        self._buckets: dict[tuple, _Bucket] = {}
        self._storm_until = 0.0
        self._storm_methods: set[str] | None = None
        self.ratelimited = 0
        self.responses: list[dict] = []  # response_url posts: {"path":…, "body":…, "at":…}
        self._held: threading.Event | None = None
        self.calls: list[Call] = []
        self.messages: dict[str, Message] = {}
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- server -------------------------------------------------------------------------------------

    def start(self) -> "FakeSlack":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                split = urlsplit(self.path)
                method = split.path.rsplit("/", 1)[-1]
                params = dict(parse_qsl(split.query))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                ctype = self.headers.get("Content-Type", "")
                if raw and "json" in ctype:
                    params.update(json.loads(raw))
                elif raw:
                    params.update(parse_qsl(raw.decode()))
                if split.path.startswith("/hooks/"):
                    status, headers, answer = fake.response_url(split.path, params)
                else:
                    auth = self.headers.get("Authorization", "")
                    token = auth[7:] if auth.startswith("Bearer ") else params.pop("token", None)
                    status, headers, answer = fake.respond(method, params, token)
                body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if not isinstance(answer, bytes):
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _handle

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True,
                                        name="fake-slack")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "FakeSlack":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_port}/api/"

    @property
    def hooks_url(self) -> str:
        """Where response_url posts go (a command's response_url points under it)."""
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_port}/hooks/"

    # -- rate limits, storms, holding calls ---------------------------------------------------------

    def storm(self, seconds: float, methods: set[str] | None = None) -> None:
        """429 for every call (of `methods`, all when None) during the next `seconds`."""
        with self._lock:
            self._storm_until = self.clock() + seconds
            self._storm_methods = methods

    def hold(self) -> threading.Event:
        """Web API calls wait (unanswered) until the returned event is set."""
        self._held = threading.Event()
        return self._held

    def _limited(self, method: str, params: dict) -> float:
        """Seconds the caller must wait (0: the call goes). Called with the lock held."""
        now = self.clock()
        if now < self._storm_until and (self._storm_methods is None
                                        or method in self._storm_methods):
            return self._storm_until - now
        lim = self.limits
        if lim is None:
            return 0.0
        if method == "chat.update":
            key, rate, burst = ("chat.update",), lim.updates_per_minute / 60.0, lim.update_burst
        elif method == "chat.postMessage":
            key = ("chat.postMessage", self._channel_id(str(params.get("channel", ""))))
            rate, burst = lim.posts_per_second, lim.post_burst
        else:
            return 0.0
        bucket = self._buckets.setdefault(key, _Bucket(rate, burst, now))
        return bucket.take(now)

    def respond(self, method: str, params: dict[str, Any],
                token: str | None) -> tuple[int, dict[str, str], dict]:
        """HTTP status, headers and body, as Slack answers."""
        if self._held is not None:
            self._held.wait(30)
        with self._lock:
            wait = self._limited(method, params) if token == self.bot_token else 0.0
            if wait > 0:
                self.ratelimited += 1
                self.calls.append(Call(method, params, token, self.clock(), 429))
                return 429, {"Retry-After": str(max(1, math.ceil(wait)))}, \
                    {"ok": False, "error": "ratelimited"}
        return 200, {}, self.answer(method, params, token)

    def response_url(self, path: str, params: dict) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.responses.append({"path": path, "body": params, "at": time.monotonic()})
        return 200, {"Content-Type": "text/plain"}, b"ok"

    # -- answering like Slack -----------------------------------------------------------------------

    def _channel_id(self, channel: str) -> str | None:
        if channel in self.channels:
            return channel
        for cid, name in self.channels.items():
            if channel.lstrip("#") == name:
                return cid
        return None

    def answer(self, method: str, params: dict[str, Any], token: str | None) -> dict:
        with self._lock:
            self.calls.append(Call(method, params, token, self.clock()))
            if method == "apps.connections.open":
                if token != self.app_token:
                    return {"ok": False, "error": "invalid_auth"}
                if not self.socket_url:
                    return {"ok": False, "error": "not_allowed_token_type"}
                return {"ok": True, "url": self.socket_url}
            if token != self.bot_token:
                return {"ok": False, "error": "invalid_auth" if token else "not_authed"}
            handler = getattr(self, "_" + method.replace(".", "_"), None)
            if handler is None:
                return {"ok": False, "error": "unknown_method"}
            return handler(params)

    def _next_ts(self) -> str:
        n = next(self._ts)
        return f"{1700000000 + n}.{n:06d}"

    @staticmethod
    def _blocks(params: dict) -> list[dict]:
        value = params.get("blocks") or []
        return json.loads(value) if isinstance(value, str) else value

    def _auth_test(self, params: dict) -> dict:
        return {"ok": True, "url": "https://fake.slack.test/", "team": "Fake Team",
                "user": "deploybot", "team_id": "T0FAKE", "user_id": "U0BOT", "bot_id": "B0BOT"}

    def _chat_postMessage(self, params: dict) -> dict:
        channel = self._channel_id(str(params.get("channel", "")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        if channel in self.not_in:
            return {"ok": False, "error": "not_in_channel"}
        metadata = params.get("metadata")
        metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
        if metadata is not None and not (isinstance(metadata, dict) and
                                         metadata.get("event_type") and
                                         isinstance(metadata.get("event_payload"), dict)):
            return {"ok": False, "error": "invalid_metadata_format"}
        ts = self._next_ts()
        msg = Message(channel, ts, params.get("text", ""), self._blocks(params),
                      params.get("thread_ts"), metadata=metadata)
        msg.history.append(msg.text)
        self.messages[ts] = msg
        return {"ok": True, "channel": channel, "ts": ts,
                "message": self._message_json(msg, with_metadata=True)}

    @staticmethod
    def _message_json(msg: Message, *, with_metadata: bool) -> dict:
        out = {"type": "message", "text": msg.text, "ts": msg.ts, "blocks": msg.blocks,
               "bot_id": "B0BOT"}
        if msg.thread_ts:
            out["thread_ts"] = msg.thread_ts
        if with_metadata and msg.metadata:
            out["metadata"] = msg.metadata
        return out

    @staticmethod
    def _flag(value: Any) -> bool:
        return str(value).lower() in ("1", "true")

    def _conversations_replies(self, params: dict) -> dict:
        """The parent message and its replies, oldest first."""
        channel = self._channel_id(str(params.get("channel", "")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        root = self.messages.get(str(params.get("ts", "")))
        if root is None or root.channel != channel:
            return {"ok": False, "error": "thread_not_found"}
        meta = self._flag(params.get("include_all_metadata"))
        thread = sorted((m for m in self.messages.values() if m.thread_ts == root.ts),
                        key=lambda m: float(m.ts))
        return {"ok": True, "has_more": False,
                "messages": [self._message_json(m, with_metadata=meta)
                             for m in [root] + thread]}

    def _conversations_history(self, params: dict) -> dict:
        """Top-level messages of the channel, newest first."""
        channel = self._channel_id(str(params.get("channel", "")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        meta = self._flag(params.get("include_all_metadata"))
        top = sorted((m for m in self.messages.values()
                      if m.channel == channel and m.thread_ts is None),
                     key=lambda m: float(m.ts), reverse=True)
        limit = int(params.get("limit") or 100)
        return {"ok": True, "has_more": len(top) > limit,
                "messages": [self._message_json(m, with_metadata=meta) for m in top[:limit]]}

    def _chat_update(self, params: dict) -> dict:
        msg = self.messages.get(str(params.get("ts")))
        if msg is None or msg.channel != params.get("channel"):
            return {"ok": False, "error": "message_not_found"}
        msg.text, msg.blocks = params.get("text", msg.text), self._blocks(params)
        msg.updates += 1
        msg.history.append(msg.text)
        return {"ok": True, "channel": msg.channel, "ts": msg.ts, "text": msg.text}

    def _chat_postEphemeral(self, params: dict) -> dict:
        if self._channel_id(str(params.get("channel", ""))) is None:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _chat_getPermalink(self, params: dict) -> dict:
        ts = str(params.get("message_ts", ""))
        return {"ok": True, "channel": params.get("channel"),
                "permalink": f"https://fake.slack.test/archives/{params.get('channel')}/"
                             f"p{ts.replace('.', '')}"}

    def _views_open(self, params: dict) -> dict:
        view = params.get("view")
        view = json.loads(view) if isinstance(view, str) else view
        return {"ok": True, "view": {**view, "id": "V" + uuid.uuid4().hex[:8].upper()}}

    _views_publish = _views_open

    def _conversations_info(self, params: dict) -> dict:
        cid = params.get("channel", "")
        if cid not in self.channels:
            return {"ok": False, "error": "channel_not_found"}
        return {"ok": True, "channel": {"id": cid, "name": self.channels[cid]}}

    def _users_info(self, params: dict) -> dict:
        """users.info as Slack answers it: user_not_found for an id the workspace lacks."""
        uid = params.get("user", "")
        if uid not in self.users:
            return {"ok": False, "error": "user_not_found"}
        u = self.users[uid]
        return {"ok": True, "user": {"id": uid, "name": u.get("name", uid.lower()),
                                     "deleted": bool(u.get("deleted")),
                                     "profile": {"real_name": u.get("real_name", ""),
                                                 "display_name": u.get("display_name", "")}}}

    def _usergroups_users_list(self, params: dict) -> dict:
        group = params.get("usergroup", "")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    # -- what tests read ----------------------------------------------------------------------------

    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def ephemerals(self, user: str | None = None) -> list[str]:
        return [c.params.get("text", "") for c in self.calls_to("chat.postEphemeral")
                if user is None or c.params.get("user") == user]

    def top_level(self, channel: str | None = None) -> list[Message]:
        with self._lock:
            return [m for m in self.messages.values()
                    if m.thread_ts is None and (channel is None or m.channel == channel)]

    def thread(self, ts: str) -> list[Message]:
        with self._lock:
            return sorted((m for m in self.messages.values() if m.thread_ts == ts),
                          key=lambda m: float(m.ts))

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0,
                 what: str = "the condition") -> Any:
        """The first truthy predicate() within `timeout` seconds, else AssertionError."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                methods = [c.method for c in self.calls]
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                     f"Web API calls so far: {methods}")
            time.sleep(0.05)


# -- requests from Slack to the app ------------------------------------------------------------------

def signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class SlackRequests:
    """Slash commands, mentions and clicks as Slack sends them, signed, to `url`."""

    def __init__(self, url: str, signing_secret: str, *, team: str = "T0FAKE",
                 channel: str = "C0STANDUP", channel_name: str = "standup",
                 client: httpx.Client | None = None, hooks_url: str | None = None) -> None:
        self.url, self.secret, self.team = url, signing_secret, team
        self.hooks_url = hooks_url or "https://hooks.slack.test/"
        self.channel, self.channel_name = channel, channel_name
        self.http = client or httpx.Client(timeout=10.0)

    def close(self) -> None:
        self.http.close()

    def signed_headers(self, body: bytes, *, timestamp: int | None = None,
                       content_type: str = "application/x-www-form-urlencoded",
                       retry_num: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts,
                   "X-Slack-Signature": signature(self.secret, ts, body)}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return headers

    def post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.http.post(self.url, content=body, headers=headers)

    def command_body(self, text: str, *, user: str, command: str = "/deploy",
                     channel: str | None = None, channel_name: str | None = None,
                     trigger_id: str | None = None) -> bytes:
        return urlencode({
            "token": "legacy-verification-token", "team_id": self.team, "team_domain": "fake",
            "channel_id": channel or self.channel,
            "channel_name": channel_name or self.channel_name,
            "user_id": user, "user_name": user.lower(), "command": command, "text": text,
            "api_app_id": "A0DEPLOYBOT", "is_enterprise_install": "false",
            "response_url": f"{self.hooks_url}commands/T0FAKE/1/{uuid.uuid4().hex[:12]}",
            "trigger_id": trigger_id or f"{uuid.uuid4().int % 10**12}.1.{uuid.uuid4().hex}",
        }).encode()

    def command(self, text: str, *, user: str, retry_num: int | None = None,
                **kwargs: Any) -> httpx.Response:
        body = self.command_body(text, user=user, **kwargs)
        return self.post(body, self.signed_headers(body, retry_num=retry_num))

    def mention(self, text: str, *, user: str, event_id: str | None = None,
                channel: str | None = None, retry_num: int | None = None) -> httpx.Response:
        payload = {
            "token": "legacy", "team_id": self.team, "api_app_id": "A0DEPLOYBOT",
            "type": "event_callback", "event_id": event_id or f"Ev{uuid.uuid4().hex[:10]}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": self.team, "user_id": "U0BOT", "is_bot": True}],
            "event": {"type": "app_mention", "user": user, "text": f"<@U0BOT> {text}",
                      "ts": f"{time.time():.6f}", "channel": channel or self.channel,
                      "event_ts": f"{time.time():.6f}"},
        }
        body = json.dumps(payload).encode()
        return self.post(body, self.signed_headers(body, content_type="application/json",
                                                   retry_num=retry_num))

    def click_body(self, message: Message, action_id: str, *, user: str,
                   action_ts: str | None = None) -> bytes:
        button = message.buttons()[action_id]
        payload = {
            "type": "block_actions", "team": {"id": self.team, "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team},
            "api_app_id": "A0DEPLOYBOT", "token": "legacy",
            "container": {"type": "message", "message_ts": message.ts,
                          "channel_id": message.channel, "is_ephemeral": False},
            "trigger_id": f"{uuid.uuid4().int % 10**12}.1.{uuid.uuid4().hex}",
            "channel": {"id": message.channel, "name": self.channel_name},
            "message": {"type": "message", "ts": message.ts, "text": message.text,
                        "blocks": message.blocks,
                        **({"thread_ts": message.thread_ts} if message.thread_ts else {})},
            "response_url": "https://hooks.slack.test/actions/T0FAKE/1/x",
            "actions": [{"action_id": action_id, "block_id": "b", "value": button.get("value"),
                         "type": "button", "text": button["text"],
                         "action_ts": action_ts or f"{time.time():.6f}"}],
        }
        return urlencode({"payload": json.dumps(payload)}).encode()

    def click(self, message: Message, action_id: str, *, user: str,
              action_ts: str | None = None) -> httpx.Response:
        body = self.click_body(message, action_id, user=user, action_ts=action_ts)
        return self.post(body, self.signed_headers(body))

    def view_submission(self, view: dict, *, user: str, values: dict) -> httpx.Response:
        payload = {
            "type": "view_submission", "team": {"id": self.team, "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team},
            "api_app_id": "A0DEPLOYBOT", "token": "legacy",
            "trigger_id": f"{uuid.uuid4().int % 10**12}.1.{uuid.uuid4().hex}",
            "view": {**view, "id": view.get("id", "V0VIEW"), "hash": uuid.uuid4().hex,
                     "state": {"values": values}},
        }
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return self.post(body, self.signed_headers(body))


class InProcessClient:
    """A WebClient stand-in that asks FakeSlack directly (no HTTP, for unit tests): answers and
    SlackApiError (status, headers, error) as slack_sdk builds them from Slack's response."""

    def __init__(self, slack: FakeSlack) -> None:
        self.slack = slack

    def __getattr__(self, name: str) -> Callable[..., Any]:
        from slack_sdk.web.slack_response import SlackResponse

        method = name.replace("_", ".")  # chat_postMessage -> chat.postMessage

        def call(**kwargs: Any) -> SlackResponse:
            params = {k: v for k, v in kwargs.items() if v is not None}
            status, headers, body = self.slack.respond(method, params, self.slack.bot_token)
            return SlackResponse(client=self, http_verb="POST", api_url=method, req_args=params,
                                 data=body, headers=headers, status_code=status).validate()
        return call
