"""The Slack front end: the Bolt app (commands, mentions, App Home) and `deploybot run`.

Every listener acknowledges at once and hands the work to a worker thread: Slack wants an
answer within 3 s, a deployment takes minutes. Redeliveries are recognised by their trigger or
event id and dropped; a deployment is created once per request key (Pipeline.request_deploy)
and driven by one worker only.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Callable, Mapping
from wsgiref.simple_server import WSGIServer, make_server

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from bot.config import Config
from bot.health import OK, Flag
from bot.metrics import SLACK_CALLS, SLACK_LATENCY
from bot.errors import ConfigError, DeliveryError, DeploybotError, InputError, NotAllowed
from bot.models import Deployment, DeploymentStatus, Gate, GateKind
from bot.identity import Actor, slack_actor
from bot.store import Store
from handlers import actions, blocks
from handlers.commands import (
    ROLLBACK_USAGE,
    HelpRequest,
    HistoryRequest,
    Request,
    UsageError,
    parse_deploy,
    parse_mention,
    parse_rollback,
)
from bot import dora
from bot import freeze as freezing
from bot import logcontext
from bot import outbox as outboxing
from bot.requests import StartRequest
from bot.scheduler import DeployScheduler
from bot.service import (Cancelled, HistoryRows, Locked, Refused, RequestService, Requested,
                         StatusView, Unlocked)
from handlers import ops_http
from handlers.slack_reporter import SlackReporter
from handlers.wiring import build_pipeline

log = logging.getLogger("deploybot.slack")

BOT_TOKEN, APP_TOKEN = "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN"
SIGNING_SECRET, API_URL = "SLACK_SIGNING_SECRET", "SLACK_API_URL"
EVENTS_PATH = "/slack/events"
WEB_API_TIMEOUT = 10.0  # seconds, every Web API call
DEPLOY_WORKERS_ENV = "DEPLOYBOT_DEPLOY_WORKERS"
DEFAULT_DEPLOY_WORKERS = 8
GROUP_CACHE_SECONDS = 60.0


# -- settings from the environment ---------------------------------------------------------------

@dataclass(frozen=True)
class SlackEnv:
    """Secrets and endpoints, from environment variables only. repr() never shows a secret."""

    bot_token: str
    app_token: str | None
    signing_secret: str | None
    api_url: str | None

    def __repr__(self) -> str:
        return f"SlackEnv(api_url={self.api_url!r})"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, http: bool) -> "SlackEnv":
        bot = environ.get(BOT_TOKEN, "").strip()
        app = environ.get(APP_TOKEN, "").strip() or None
        secret = environ.get(SIGNING_SECRET, "").strip() or None
        mode = "HTTP mode (--http)" if http else "Socket Mode"
        missing = [BOT_TOKEN] if not bot else []
        missing += [SIGNING_SECRET] if http and not secret else []
        missing += [APP_TOKEN] if not http and not app else []
        if missing:
            raise ConfigError(f"{', '.join(missing)} not set: {mode} needs "
                              + ("the bot token and the signing secret" if http
                                 else "the bot token and an app-level token"),
                              hint="see docs/slack.md; the values are on the app's settings pages")
        if not bot.startswith("xoxb-"):
            raise ConfigError(f"{BOT_TOKEN} is not a bot token (it starts with xoxb-)",
                              hint="OAuth & Permissions → Bot User OAuth Token")
        if not http and not app.startswith("xapp-"):
            raise ConfigError(f"{APP_TOKEN} is not an app-level token (it starts with xapp-)",
                              hint="Basic Information → App-Level Tokens, scope connections:write")
        api = environ.get(API_URL, "").strip() or None
        if api and not api.endswith("/"):
            api += "/"
        return cls(bot, app, secret, api)


CREDENTIALS = ("token", "client_secret", "client_id", "code")  # oauth and auth.test arguments


class RedactingWebClient(WebClient):
    """Every Web API call's arguments (texts, blocks, views) leave with secrets redacted."""

    redact: Callable[[str], str] | None = None

    def api_call(self, api_method: str, **kwargs: Any):  # type: ignore[override]
        deep = getattr(self.redact, "deep", None)
        if deep is not None:  # the credentials themselves must still reach Slack
            kwargs = {k: {n: v if n in CREDENTIALS else deep(v) for n, v in part.items()}
                      if k in ("data", "params", "json") and isinstance(part, dict) else part
                      for k, part in kwargs.items()}
        started = time.perf_counter()
        outcome = "ok"
        try:
            return super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            outcome = str(exc.response.get("error") or "error")[:40]
            raise
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:  # for /metrics (bot/metrics.py)
            SLACK_LATENCY.labels(api_method).observe(time.perf_counter() - started)
            SLACK_CALLS.labels(api_method, outcome).inc()


def web_client(token: str, api_url: str | None = None, redact=None, *,
               rate_limit_retries: int = 0) -> WebClient:
    """The bot's client has no rate-limit retries: they would sleep inside the call, so a 429
    reaches the sender (handlers/slack_sender), which pauses that method or channel and sends
    the latest state. One-shot commands (check-config) may retry after Retry-After instead.
    Every call's arguments leave redacted (RedactingWebClient)."""
    client = RedactingWebClient(token=token, base_url=api_url or WebClient.BASE_URL,
                                timeout=int(WEB_API_TIMEOUT))
    client.redact = redact
    if rate_limit_retries:
        client.retry_handlers.append(
            RateLimitErrorRetryHandler(max_retry_count=rate_limit_retries))
    return client


def check_bot_token(client: WebClient) -> dict:
    """auth.test: a wrong or revoked token stops the start with a message a person can act on."""
    try:
        return client.auth_test().data
    except SlackApiError as exc:
        error = exc.response.get("error", "unknown error")
        raise ConfigError(f"Slack refused {BOT_TOKEN} ({error})",
                          hint="copy the Bot User OAuth Token again; reinstall the app if it "
                               "was revoked") from None
    except Exception as exc:
        raise ConfigError(f"cannot reach the Slack Web API at {client.base_url}: "
                          f"{type(exc).__name__}: {exc}",
                          hint=f"check the network or {API_URL}") from None


# -- bookkeeping ---------------------------------------------------------------------------------

class Deliveries:
    """Ids of requests already taken (trigger ids, event ids): a redelivery is dropped -- by
    this process at once (first_here, before the ack), and through the store by every other
    replica too (first_everywhere, on a worker: a commit waits for the disk and for the store's
    lock, which deployments share, and Slack only needs the ack)."""

    def __init__(self, keep_seconds: float = 3600.0, limit: int = 20000,
                 store: Store | None = None) -> None:
        self.keep_seconds, self.limit, self.store = keep_seconds, limit, store
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_here(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._seen and (len(self._seen) >= self.limit or
                                  next(iter(self._seen.values())) < now - self.keep_seconds):
                self._seen.popitem(last=False)
            if key in self._seen:
                return False
            self._seen[key] = now
        return True

    def first_everywhere(self, key: str) -> bool:
        """After first_here(key): no other replica has taken it either."""
        if self.store is None:
            return True
        try:
            return self.store.first_request(key, keep=timedelta(seconds=self.keep_seconds))
        except Exception:  # the store is down: nothing can be done for the request anyway
            log.exception("could not record request %s; dropping it", key)
            with self._lock:
                self._seen.pop(key, None)  # a redelivery may find the store back
            return False


HOME_FIGURES_WINDOW = timedelta(days=30)


class AppHome:
    """The Home tab: locks, deployments in progress, the last ones per environment."""

    def __init__(self, front: "SlackFrontEnd") -> None:
        self.front = front
        self.users: set[str] = set()
        self._lock = threading.Lock()
        self._scheduled = False

    def view(self) -> dict:
        store, config = self.front.store, self.front.config
        recent = {env: store.deployments(environment=env, limit=5) for env in config.environments}
        now = store.now()
        figures = dora.compute(store.dora_rows(), now=now, since=now - HOME_FIGURES_WINDOW,
                               environments=dora.production_environments(config))
        status = self.front.service.status(running=False)  # as `/deploy status` shows them
        return blocks.home_view(config, [line.lock for line in status.locks],
                                [a.deployment for a in status.active], recent,
                                figures=dora.as_lines(figures))

    def opened(self, user: str) -> None:
        with self._lock:
            self.users.add(user)
        self.front.reporter.call("views_publish", user_id=user, view=self.view())

    def refresh_soon(self) -> None:
        """Something changed: re-publish for everyone who opened the tab (coalesced)."""
        if not self.front.config.slack.app_home:
            return
        with self._lock:
            if self._scheduled or not self.users:
                return
            self._scheduled = True
        self.front.submit(self._refresh)

    def _refresh(self) -> None:
        with self._lock:
            self._scheduled = False
            users = sorted(self.users)
        view = self.view()
        for user in users:
            self.front.reporter.call("views_publish", user_id=user, view=view)


def deploy_workers_from(environ: Mapping[str, str]) -> int:
    """How many deployments run at once ($DEPLOYBOT_DEPLOY_WORKERS, default 8); 0 runs them on
    the request workers, as before there was a pool of their own."""
    text = environ.get(DEPLOY_WORKERS_ENV, "").strip()
    if not text:
        return DEFAULT_DEPLOY_WORKERS
    if not text.isdigit() or int(text) > 1000:
        raise ConfigError(f"{DEPLOY_WORKERS_ENV}={text[:20]!r} is not a number of workers",
                          hint="a whole number from 0 to 1000 (0: no separate pool)")
    return int(text)


def explain(exc: DeploybotError) -> str:
    icon = ":no_entry:" if isinstance(exc, NotAllowed) else ":warning:"
    if isinstance(exc, UsageError):
        return exc.text()
    return f"{icon} {blocks.escape(exc.message)}" + (f"\n_{blocks.escape(exc.hint)}_" if exc.hint
                                                      else "")


def from_a_person(event: Mapping[str, Any]) -> bool:
    """A message a person wrote: not one of a bot, an app or an incoming webhook (those carry
    a bot_id, and any name they like; a webhook has no user at all), which acts for nobody."""
    return bool(event.get("user")) and not event.get("bot_id") and \
        event.get("subtype") not in ("bot_message",)


def _retry_num(request: Any) -> int:
    values = (request.headers or {}).get("x-slack-retry-num") or ["0"]
    try:
        return int(values[0] if isinstance(values, list) else values)
    except ValueError:
        return 0


class _SameTokenUnused(logging.Filter):
    """Bolt's App() reads SLACK_BOT_TOKEN from the environment whenever no `token` is passed
    (there is no way to pass none), then warns "`token` will be unused" because `client` is
    given too -- on every start. When the client carries that very token nothing is unused:
    that warning is dropped. A different token in the environment still warns."""

    def __init__(self, client_token: str | None) -> None:
        super().__init__()
        self.client_token = client_token

    def filter(self, record: logging.LogRecord) -> bool:
        from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped

        return not (record.getMessage() == warning_client_prioritized_and_token_skipped()
                    and (os.environ.get(BOT_TOKEN) or "").strip() == self.client_token)


# -- the front end -------------------------------------------------------------------------------

class SlackFrontEnd:
    """The Bolt app, the pipeline it drives and the workers that drive it."""

    def __init__(self, config: Config, store: Store, client: WebClient, *,
                 signing_secret: str | None = None, environ: Mapping[str, str] | None = None,
                 workers: int = 8, deploy_workers: int | None = None, tracker=None,
                 backend_for=None, probe=None, clock=None,
                 reporter_factory: Callable[..., SlackReporter] = SlackReporter) -> None:
        self.config, self.store, self.client = config, store, client
        self.executor = ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix="deploybot-worker")
        # Deployments take minutes: on workers of their own they never hold up the answers to
        # other requests (status, locks, approvals); bounded, so many requests queue, not pile up.
        if deploy_workers is None:
            deploy_workers = deploy_workers_from(environ or {})
        self.deploy_executor = ThreadPoolExecutor(
            max_workers=deploy_workers, thread_name_prefix="deploybot-deploy") \
            if deploy_workers > 0 else None
        self.deliveries = Deliveries(store=store)
        self.home = AppHome(self)
        self.reporter = reporter_factory(client, store, config, on_change=self.home.refresh_soon)
        self.pipeline = build_pipeline(config, store, reporter=self.reporter,
                                       approver=self.reporter, environ=environ, tracker=tracker,
                                       backend_for=backend_for, probe=probe, clock=clock,
                                       durable_posts=True)
        if isinstance(client, RedactingWebClient) and client.redact is None:
            client.redact = self.pipeline.redact  # what this front end posts itself, too
        # Scheduled and queued deployments; started by serve() (it posts health summaries too).
        self.service = RequestService(self.pipeline)
        self.scheduler = DeployScheduler(self.pipeline, summary=self.reporter.summary)
        self._channel_names: dict[str, str] = {}
        self._groups: dict[str, tuple[float, frozenset[str]]] = {}
        bolt_log = logging.getLogger("deploybot.slack.bolt")
        same_token = _SameTokenUnused(client.token)
        bolt_log.addFilter(same_token)
        try:
            self.app = App(
                client=client,
                signing_secret=signing_secret or "unused-in-socket-mode",
                request_verification_enabled=bool(signing_secret),
                # Listeners only parse, ack and hand over to self.executor: running them before
                # the response is as fast as it gets and leaves no ack to poll for.
                process_before_response=True,
                logger=bolt_log,
            )
        finally:
            bolt_log.removeFilter(same_token)
        self._register()
        actions.register(self.app, self)

    # -- workers ----------------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._submit_to(self.executor, fn, *args)

    def launch(self, d: Deployment, channel: str, user: str | None = None, *,
               response_url: str | None = None) -> None:
        """start() on a deployment worker (in this thread when there is no separate pool)."""
        if self.deploy_executor is None:
            self.start(d, channel, user, response_url=response_url)
            return
        self._submit_to(self.deploy_executor,
                        lambda: self.start(d, channel, user, response_url=response_url))

    @staticmethod
    def _submit_to(executor: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> None:
        def guarded() -> None:
            try:
                fn(*args)
            except Exception:
                log.exception("worker task %s failed", getattr(fn, "__name__", fn))
        try:
            executor.submit(guarded)
        except RuntimeError:  # shutting down: nothing new starts
            log.warning("shutting down; dropped %s", getattr(fn, "__name__", fn))

    def close(self) -> None:
        """Start nothing new; let the deployments that are running finish (they have timeouts)."""
        self.scheduler.shutdown()
        waiting = logcontext.waiting_for(self.store)
        for line in waiting:
            log.info("%s", line)
        self.executor.shutdown(wait=True, cancel_futures=True)
        if self.deploy_executor is not None:  # after the request workers: they hand work here
            self.deploy_executor.shutdown(wait=True, cancel_futures=True)
        sender = getattr(self.reporter, "sender", None)
        if sender is not None:
            log.info("sending what is left for Slack, then closing the connection")
            sender.close()
        log.info("stopped")

    def resume(self) -> None:
        """After a start: bring the threads of open and recent deployments in line with the store."""
        seen = set()
        for d in self.pipeline.active() + self.store.deployments(limit=20):
            if d.id not in seen and d.thread_ref:
                seen.add(d.id)
                self.reporter.rerender(d)

    # -- talking back -----------------------------------------------------------------------------

    def ephemeral(self, channel: str | None, user: str, text: str, *,
                  thread_ts: str | None = None) -> None:
        if not channel:
            channel = self.reporter.default_channel
        kwargs: dict[str, Any] = {"channel": channel, "user": user, "text": text}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        self.reporter.call("chat_postEphemeral", **kwargs)

    def respond(self, response_url: str | None, channel: str | None, user: str,
                text: str) -> None:
        """Tell the requester privately through the command's response_url (it works where the
        bot cannot post); without one, or when it fails, an ephemeral message."""
        if response_url:
            try:
                answer = WebhookClient(response_url, timeout=int(WEB_API_TIMEOUT)).send(
                    text=text, response_type="ephemeral", replace_original=False)
                if answer.status_code == 200:
                    return
                log.warning("response_url answered %s", answer.status_code)
            except Exception as exc:
                log.warning("response_url failed: %s", type(exc).__name__)
        self.ephemeral(channel, user, text)

    def allowed_channel(self, channel_id: str, channel_name: str | None = None, *,
                        ask: bool = True) -> bool | None:
        """May requests come from this channel? With ask=False (before the ack) None when
        only a Web API call could tell."""
        allowed = self.config.slack.channels or [self.config.channel]
        if channel_id in allowed:
            return True
        name = channel_name
        if not name or name in ("privategroup", "directmessage"):
            if not ask and channel_id not in self._channel_names:
                return None
            name = self.channel_name(channel_id)
        names = {c.lstrip("#").casefold() for c in allowed}
        return bool(name) and name.lstrip("#").casefold() in names

    def channel_name(self, channel_id: str) -> str | None:
        if channel_id not in self._channel_names:
            answer = self.reporter.call("conversations_info", channel=channel_id)
            if not answer:
                return None
            self._channel_names[channel_id] = answer.get("channel", {}).get("name", "")
        return self._channel_names[channel_id]

    def channel_hint(self) -> str:
        allowed = self.config.slack.channels or [self.config.channel]
        shown = ", ".join(f"<#{c}>" if c[:1] in "CG" and c[1:].isalnum() and c.isupper()
                          else blocks.escape(c) for c in allowed)
        return f"deploybot takes requests in {shown} only, so the team sees every deployment."

    # -- who may approve --------------------------------------------------------------------------

    def groups_of(self, user: str, environment: str) -> tuple[str, ...]:
        """The user's Slack user groups among those that may approve in `environment`."""
        env = self.config.environments[environment]
        candidates = list(env.approver_groups) + [a for a in env.approvers if a.startswith("S")]
        return tuple(g for g in dict.fromkeys(candidates) if user in self._members(g))

    def _members(self, group: str) -> frozenset[str]:
        cached = self._groups.get(group)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        answer = self.reporter.call("usergroups_users_list", usergroup=group)
        members = frozenset(answer.get("users", [])) if answer else frozenset()
        if answer:  # a failed look-up is not cached: the next click asks again
            self._groups[group] = (time.monotonic() + GROUP_CACHE_SECONDS, members)
        return members

    def actor(self, user: str, environment: str | None = None) -> Actor:
        """The person behind a Slack user id (people: slack), with their approver groups."""
        groups = self.groups_of(user, environment) if environment and user else ()
        return slack_actor(self.config, user, groups)

    # -- deployments ------------------------------------------------------------------------------

    def start(self, d: Deployment, channel: str, user: str | None = None, *,
              response_url: str | None = None) -> bool:
        """Open the thread and drive the deployment, once, whatever the number of requests."""
        # One thread and one run per deployment, whichever replica got which request.
        current = self.store.deployment(d.id)
        fresh = current.status is DeploymentStatus.REQUESTED and \
            self.store.claim(d.id, "thread_claimed")
        if not fresh:
            current = self.store.deployment(d.id)
            if user:
                self.ephemeral(channel, user, f"Already received: deployment #{d.id} is "
                                              f"{current.status.value.replace('_', ' ')}.")
            return False
        if not self._open_thread(d, channel, user, response_url):
            return False
        self.service.handle(StartRequest(d.id), lambda env: self.actor(user or "", env))
        return True

    def _open_thread(self, d: Deployment, channel: str, user: str | None,
                     response_url: str | None) -> bool:
        """Post the root message; where the bot cannot post, the deployment does not start and
        the requester is told the fix. A passing failure (rate limit, timeout) does not stop it:
        the thread opens with the next message."""
        try:
            self.reporter.start_thread(d, channel)
            return True
        except DeliveryError as exc:
            if not exc.permanent:
                log.warning("deployment #%s: %s; the thread opens later", d.id, exc)
                return True
            reason, fix = f"{exc.message}; nothing was deployed", exc.hint
        self.store.transition(d.id, DeploymentStatus.FAILED, failure=reason, detail=reason)
        if user:
            self.respond(response_url, channel, user,
                         f":warning: Deployment #{d.id} ({blocks.what(d)}) did not start: "
                         f"{blocks.escape(reason)}.\n_Fix: {fix}, then send "
                         f"the command again._")
        return False

    def execute(self, req: Request, user: str, channel: str, key: str | None,
                thread_ts: str | None = None, *, response_url: str | None = None,
                check_channel: bool = False) -> None:
        """Carry out one parsed request on a worker; every failure is told to the person.
        `check_channel`: the channel could not be checked before the ack; check it first."""
        if not user:  # nobody to act for, and nobody to tell: fail closed
            log.warning("dropped a %s without a Slack user id", type(req).__name__)
            return
        if check_channel and not self.allowed_channel(channel):
            self.respond(response_url, channel, user, self.channel_hint())
            return
        try:
            self._execute(req, user, channel, key, response_url)
        except DeploybotError as exc:
            self.ephemeral(channel, user, explain(exc), thread_ts=thread_ts)
        except Exception:
            log.exception("request %r failed", req)
            self.ephemeral(channel, user, ":warning: deploybot failed on this request; "
                                          "the details are in its log.", thread_ts=thread_ts)

    def _execute(self, req: Request, user: str, channel: str, key: str | None,
                 response_url: str | None = None) -> None:
        if isinstance(req, HelpRequest):
            self.ephemeral(channel, user, req.usage)
            return
        if isinstance(req, HistoryRequest):
            req = replace(req, limit=15)  # what fits an ephemeral message
        outcome = self.service.handle(req, lambda env: self.actor(user, env),
                                      request_key=f"slack:{key}" if key else None)
        if isinstance(outcome, Refused):
            raise outcome.error  # told as every other failure of a request (execute)
        if isinstance(outcome, Requested):
            if outcome.scheduled:
                self._schedule(outcome.deployment, channel, user, response_url)
            else:
                self.launch(outcome.deployment, channel, user, response_url=response_url)
        elif isinstance(outcome, StatusView):
            self._post_status(outcome, channel, user)
        elif isinstance(outcome, HistoryRows):
            msg = blocks.history_message(self.config, list(outcome.rows), outcome.service)
            self.reporter.call("chat_postEphemeral", channel=channel, user=user, **msg.kwargs())
        elif isinstance(outcome, (Locked, Unlocked)):
            lock, who = outcome.lock, blocks.person(self.config, user)
            text = (f":lock: {who} locked *{blocks.escape(lock.scope)}*: "
                    f"{blocks.escape(outcome.reason)}" if isinstance(outcome, Locked) else
                    f":unlock: {who} unlocked *{blocks.escape(lock.scope)}* (held by "
                    f"{blocks.person(self.config, lock.holder)}: {blocks.escape(lock.reason)}): "
                    f"{blocks.escape(outcome.reason)}")
            self.reporter.call("chat_postMessage", channel=channel, text=text)
            self.home.refresh_soon()
        elif isinstance(outcome, Cancelled):
            d = outcome.deployment
            self.ephemeral(channel, user, f"Cancelled deployment #{d.id} ({blocks.what(d)}).")
        else:  # pragma: no cover - the grammar makes no other request
            raise InputError(f"unsupported outcome {outcome!r}")

    def _post_status(self, view: StatusView, channel: str, user: str) -> None:
        running = [f"*{r.environment}* {r.service}: ? {blocks.escape(r.error.message)}"
                   if r.error is not None else
                   f"*{r.environment}* {r.service}: {blocks.escape(r.version or '-')} "
                   f"{blocks.escape(r.detail)}" for r in view.running]
        msg = blocks.status_message(self.config, [line.lock for line in view.locks],
                                    [a.deployment for a in view.active], running)
        waiting = [f"#{a.deployment.id} {blocks.what(a.deployment)}: {a.waiting}"
                   for a in view.waiting]
        if waiting:
            msg.blocks.insert(2, {"type": "section", "text": {
                "type": "mrkdwn", "text": "*Waiting*\n" + blocks.escape("\n".join(waiting))}})
        undelivered = [outboxing.waiting_line(i, view.now) for i in view.undelivered]
        if undelivered:  # what the tracker (or Slack) has not been told yet
            text = blocks.escape("\n".join(undelivered[:10]))[:2800]
            msg.blocks.insert(3 if waiting else 2, {"type": "section", "text": {
                "type": "mrkdwn", "text": f"*Undelivered ({len(undelivered)})*\n{text}"}})
        self.reporter.call("chat_postEphemeral", channel=channel, user=user, **msg.kwargs())

    def _schedule(self, d: Deployment, channel: str, user: str,
                  response_url: str | None = None) -> None:
        """A scheduled deployment: its thread now, the checklist now as a dry run, a job."""
        if not self.store.claim(d.id, "thread_claimed"):
            self.ephemeral(channel, user, f"Already received: deployment #{d.id}.")
            return
        if not self._open_thread(d, channel, user, response_url):
            return
        self.scheduler.add(d)
        when = freezing.local(d.scheduled_for, self.config.timezone)
        self.reporter.step(d, f"Scheduled for {when}: the checklist runs now as a dry run and "
                              "again at that time.")
        dry = self.service.precheck(d, run=lambda dry: self.start(dry, channel))
        verdict = ("passes now" if dry.status is DeploymentStatus.SUCCEEDED
                   else f"does not pass now ({dry.failure}); it runs again at {when}")
        self.reporter.step(d, f"Checklist now (dry run #{dry.id}): {verdict}.")
        self.ephemeral(channel, user, f"Scheduled deployment #{d.id} ({blocks.what(d)}) for "
                                      f"{when}. `/deploy cancel #{d.id}` cancels it.")

    # -- listeners --------------------------------------------------------------------------------

    def _fresh(self, key: str | None, request: Any) -> bool:
        """False for a redelivery: a key seen here before, or a retry that cannot be told
        apart. Other replicas are asked on the worker (_taken)."""
        if key:
            return self.deliveries.first_here(key)
        return _retry_num(request) == 0

    def _taken(self, key: str | None) -> bool:
        """On a worker: True when no other replica took the request."""
        return key is None or self.deliveries.first_everywhere(key)

    def _command(self, ack, body: dict, request, parse: Callable[[str], Request]) -> None:
        trigger = body.get("trigger_id")
        key = f"cmd:{trigger}" if trigger else None
        if not self._fresh(key, request):
            ack()
            return
        user, channel = body.get("user_id", ""), body.get("channel_id", "")
        # No Web API call before the ack: a channel known only by its id is checked after it.
        allowed = self.allowed_channel(channel, body.get("channel_name"), ask=False)
        if allowed is False:
            ack(text=self.channel_hint(), response_type="ephemeral")
            return
        try:
            req = parse(body.get("text", ""))
        except UsageError as exc:
            ack(text=exc.text(), response_type="ephemeral")
            return
        if isinstance(req, HelpRequest):
            ack(text=req.usage, response_type="ephemeral")
            return
        ack()
        self.submit(lambda: self._taken(key) and self.execute(
            req, user, channel, key, response_url=body.get("response_url"),
            check_channel=allowed is None))

    def _mention(self, event: dict, key: str | None) -> None:
        if not self._taken(key):
            return
        user, channel = event.get("user", ""), event.get("channel", "")
        thread_ts = event.get("thread_ts")
        if not self.allowed_channel(channel):
            self.ephemeral(channel, user, self.channel_hint(), thread_ts=thread_ts)
            return
        try:
            req = parse_mention(event.get("text", ""), services=list(self.config.services),
                                environments=list(self.config.environments))
        except UsageError as exc:
            self.ephemeral(channel, user, exc.text(), thread_ts=thread_ts)
            return
        self.execute(req, user, channel, key, thread_ts)

    def _register(self) -> None:
        app, config = self.app, self.config
        envs, services = list(config.environments), list(config.services)

        @app.command("/deploy")
        def deploy_command(ack, body, request):
            self._command(ack, body, request, lambda text: parse_deploy(text, environments=envs,
                                                                        services=services))

        @app.command("/rollback")
        def rollback_command(ack, body, request):
            def parse(text: str) -> Request:
                if not text.strip():
                    raise UsageError("say what to roll back", ROLLBACK_USAGE)
                return parse_rollback(text, services=services, environments=envs)
            self._command(ack, body, request, parse)

        @app.event("app_mention")
        def mention(body, event, request):
            if not from_a_person(event):
                log.warning("ignored a mention posted by a bot or a webhook (bot_id %s, user "
                            "%s): deploybot takes requests from people only",
                            str(event.get("bot_id"))[:20], str(event.get("user"))[:20])
                return
            event_id = body.get("event_id")
            key = f"event:{event_id}" if event_id else None
            if self._fresh(key, request):
                self.submit(self._mention, event, key)

        @app.event("app_home_opened")
        def home_opened(event):
            if event.get("tab", "home") == "home" and config.slack.app_home:
                self.submit(self.home.opened, event["user"])


# -- serving -------------------------------------------------------------------------------------

def refuse_malformed_signatures(wsgi_app: Callable) -> Callable:
    """401 for a request whose X-Slack-Request-Timestamp is not a number.

    Bolt's verifier turns it into an int and answers 500 on a ValueError; a forged or broken
    request is unauthorised, not a server error, and must reach nothing else.
    """
    def guarded(environ: dict, start_response: Callable) -> Any:
        stamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP")
        if environ.get("REQUEST_METHOD") == "POST" and stamp is not None and \
                not (stamp.isascii() and stamp.strip().isdigit()):
            start_response("401 Unauthorized", [("Content-Type", "text/plain")])
            return [b"invalid request"]
        return wsgi_app(environ, start_response)
    return guarded


def make_http_server(app: App, host: str = "127.0.0.1", port: int = 3000,
                     ops: Callable[[Callable], Callable] | None = None) -> WSGIServer:
    """Bolt behind the standard library's WSGI server, one thread per request. `ops` puts
    /healthz, /readyz and /metrics in front of it (handlers/ops_http.ops_app)."""
    slack = refuse_malformed_signatures(SlackRequestHandler(app, path=EVENTS_PATH))
    return make_server(host, port, ops(slack) if ops else slack,
                       server_class=ops_http.ThreadingWSGIServer,
                       handler_class=ops_http.QuietHandler)


def metrics_address(args, environ: Mapping[str, str]) -> tuple[str, int]:
    """Socket Mode's /healthz, /readyz, /metrics: --metrics-host/--metrics-port, else
    $DEPLOYBOT_METRICS_HOST/PORT, else 127.0.0.1:9464 (loopback unless told otherwise)."""
    host = (getattr(args, "metrics_host", None) or environ.get(ops_http.METRICS_HOST_ENV, "")
            .strip() or ops_http.DEFAULT_METRICS_HOST)
    port = getattr(args, "metrics_port", None)
    if port is None:
        text = environ.get(ops_http.METRICS_PORT_ENV, "").strip()
        if not text:
            return host, ops_http.DEFAULT_METRICS_PORT
        if not text.isdigit() or not 0 <= int(text) <= 65535:
            raise ConfigError(f"{ops_http.METRICS_PORT_ENV}={text[:20]!r} is not a port number",
                              hint="a number from 1 to 65535 (0: any free port)")
        port = int(text)
    return host, port


def serve(ctx, args, *, environ: Mapping[str, str] | None = None,
          stop: threading.Event | None = None, on_ready: Callable[[], None] | None = None) -> int:
    """`deploybot run [--http --host --port]`: until SIGINT/SIGTERM (or `stop` is set)."""
    environ = os.environ if environ is None else environ
    http = bool(getattr(args, "http", False))
    env = SlackEnv.from_environ(environ, http=http)
    metrics_at = None if http else metrics_address(args, environ)
    from handlers.wiring import start_redaction

    client = web_client(env.bot_token, env.api_url,
                        redact=start_redaction(ctx.config, ctx.store, environ))
    identity = check_bot_token(client)
    front = SlackFrontEnd(ctx.config, ctx.store, client,
                          signing_secret=env.signing_secret if http else None, environ=environ)
    stop = stop or threading.Event()
    restore = _stop_on_signals(stop)
    server = handler = ops_server = None
    from handlers.wiring import ReplicaRole

    role = ReplicaRole(ctx.store, front.scheduler, environ)
    readiness = ops_http.readiness_of(ctx.store, front.scheduler)
    app_ready = Flag("the app is not serving yet")
    if http:
        readiness.add("slack", app_ready)  # auth.test passed above; ready once it serves
    else:
        readiness.add("slack", lambda: OK if handler is not None and handler.client.is_connected()
                      else "Socket Mode not connected")
    metrics = ops_http.metrics_app(ctx.store, readiness, role)
    ops = lambda fallback: ops_http.ops_app(readiness, metrics, fallback,  # noqa: E731
                                            about=role.about)
    try:
        if not http:  # answers (503) during recovery and the connection already
            ops_server = ops_http.OpsServer.listen(ops(None), *metrics_at).start()
        front.resume()
        role.start()  # the leader (alone: this process) recovers and starts what is due
        for line in front.scheduler.start():
            log.info("scheduler: %s", line)
        if http:
            server = make_http_server(front.app, args.host, args.port, ops=ops)
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                             name="deploybot-http", daemon=True).start()
            app_ready.set()
            where = (f"http://{args.host}:{server.server_port}{EVENTS_PATH}; "
                     f"{ops_http.HEALTH} {ops_http.READY} {ops_http.METRICS} on the same port")
        else:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            handler = SocketModeHandler(front.app, env.app_token)
            try:
                handler.connect()
            except SlackApiError as exc:
                raise ConfigError(f"Slack refused {APP_TOKEN} ({exc.response.get('error', '?')})",
                                  hint="create an app-level token with connections:write and "
                                       "turn Socket Mode on") from None
            where = (f"Socket Mode; {ops_http.HEALTH} {ops_http.READY} {ops_http.METRICS} on "
                     f"{ops_server.url}")
        print(f"deploybot is listening ({where}) as @{identity.get('user', '?')} in "
              f"{identity.get('team', '?')}; Ctrl-C stops it", flush=True)
        if on_ready:
            on_ready()
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        app_ready.clear("stopping")
        if handler is not None:
            handler.close()
        if server is not None:
            server.shutdown()
            server.server_close()
        front.close()
        role.stop()  # after the running deployments ended: nothing of ours is left to recover
        if ops_server is not None:  # last: /readyz says 503 while the rest stops
            ops_server.stop()
        restore()


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()
    for sig in previous:
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return restore
