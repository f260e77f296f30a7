"""No secret leaves: every configured secret value is replaced by [redacted] wherever deploybot
prints, stores, posts or comments.

The Redactor is built at start-up from the values themselves (tokens and passwords named in the
config, every env_file value) and applied at each exit: the store, the reporter, the tracker's
comments, the terminal, the logs and the Slack Web API client.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from bot.envfile import env_file_values

if TYPE_CHECKING:
    from bot.config import Config

REDACTED = "[redacted]"
# Shorter values ("1", "true", "8080") are configuration, not secrets; replacing them would
# mangle ordinary text.
MIN_SECRET_LENGTH = 6
SLACK_SECRET_ENVS = ("SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET")
STORE_ENV = "DEPLOYBOT_DB"  # may be a PostgreSQL DSN with a password
STORE_SECRET_ENVS = ("PGPASSWORD",)  # libpq's: the store's password outside the DSN


def _b64(text: str) -> set[str]:
    raw = text.encode()
    out = set()
    for enc in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        out |= {enc, enc.rstrip("=")}
    return out


def encodings(secret: str) -> set[str]:
    """The value and the simple forms it travels in: URL-quoted, JSON-escaped, base64."""
    forms = {secret, quote(secret, safe=""), quote(secret), quote_plus(secret),
             json.dumps(secret)[1:-1]}
    forms |= _b64(secret)
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def clip(text: str, limit: int) -> str:
    """At most `limit` characters, cut between words: a secret cut in two would show a part
    the Redactor no longer recognises."""
    if len(text) <= limit:
        return text
    head = text[:limit]
    words = head.rsplit(None, 1)
    return f"{words[0]} …" if len(words) == 2 else "…"


class Redactor:
    """Callable text -> text with every known secret (in every simple encoding) replaced."""

    def __init__(self, secrets: Iterable[str] = (),
                 pairs: Iterable[tuple[str, str]] = ()) -> None:
        forms: set[str] = set()
        for value in secrets:
            for candidate in {value, (value or "").strip()}:
                if _secret_like(candidate):
                    forms |= encodings(candidate)
        for user, password in pairs:  # HTTP basic auth sends base64("user:password")
            if _secret_like(password):
                forms |= _b64(f"{user}:{password}")
        self.count = len(forms)
        # Longest first, so a value containing another is replaced whole.
        self._pattern = re.compile("|".join(
            re.escape(f) for f in sorted(forms, key=lambda f: (-len(f), f)))) if forms else None

    def __call__(self, text: str) -> str:
        if not text or self._pattern is None or not isinstance(text, str):
            return text
        return self._pattern.sub(REDACTED, text)

    def deep(self, value: Any) -> Any:
        """Strings inside lists, dicts, tuples and dataclasses (a Deployment, a CheckResult)."""
        if isinstance(value, Enum):  # DeploymentStatus is a str too, and must stay itself
            return value
        if isinstance(value, str):
            return self(value)
        if self._pattern is None:
            return value
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.deep(v) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {f.name: self(getattr(value, f.name)) for f in dataclasses.fields(value)
                       if isinstance(getattr(value, f.name), str)
                       and not isinstance(getattr(value, f.name), Enum)}
            return dataclasses.replace(value, **changes) if changes else value
        return value


def _secret_like(value: str | None) -> bool:
    if not value or len(value) < MIN_SECRET_LENGTH:
        return False
    return not value.isdigit() and value.lower() not in ("true", "false", "enabled", "disabled")


def secret_env_names(config: Config, *, declared: bool = True) -> list[str]:
    """Names of the environment variables that hold deploybot's own secrets (and, with
    `declared`, the ones `secret_env` lists, which backend tools may still need)."""
    names = list(SLACK_SECRET_ENVS) + (list(config.secret_env) if declared else [])
    tracker = config.tracker.model_dump()
    names += [str(v) for k, v in tracker.items() if k.endswith("_env") and v]
    for name in config.services:
        for env in config.environments:
            svc = config.service(name, env)
            if svc.build:
                names += [n for n in (svc.build.username_env, svc.build.password_env) if n]
            if svc.http_auth and svc.http_auth.bearer_token_env:
                names.append(svc.http_auth.bearer_token_env)
    return list(dict.fromkeys(names))


def _env_files(config: Config) -> list[str]:
    files = []
    for name in config.services:
        for env in config.environments:
            path = getattr(config.service(name, env).backend, "env_file", None)
            if path:
                files.append(str(path))
    return list(dict.fromkeys(files))


def _token_files(config: Config) -> list[str]:
    return list(dict.fromkeys(
        svc.http_auth.bearer_token_file for name in config.services for env in config.environments
        if (svc := config.service(name, env)).http_auth and svc.http_auth.bearer_token_file))


def _read_small(path: str) -> str:
    from bot.envfile import env_file_problem

    if env_file_problem(path):  # the same rule: a regular file, never /proc or a FIFO
        return ""
    try:
        return Path(path).read_text(errors="replace")[:65536].strip()
    except OSError:
        return ""


def store_secrets(environ: Mapping[str, str]) -> list[str]:
    """The store's password: inside DEPLOYBOT_DB when it is a PostgreSQL DSN (the rest of it --
    a path, host, user -- is no secret and stays readable in messages), or in PGPASSWORD."""
    return [dsn_password(environ.get(STORE_ENV, "")),
            *(environ.get(n, "") for n in STORE_SECRET_ENVS)]


def dsn_password(dsn: str) -> str:
    """The password of a postgresql:// DSN, in its user part or `?password=` ("" if none)."""
    if not dsn.lower().startswith(("postgresql://", "postgres://")):
        return ""
    try:
        parts = urlsplit(dsn)
        # The Redactor adds the URL-quoted form of the value itself.
        return unquote(parts.password or "") or dict(parse_qsl(parts.query)).get("password", "")
    except ValueError:  # an unreadable DSN: the store refuses it before using it
        return ""


def slack_redactor(environ: Mapping[str, str], dsns: Iterable[str] = ()) -> Redactor:
    """Before a config is loaded: the Slack secrets (known by name), the store's password and
    the passwords of `dsns` (stores named on the command line: `deploybot db copy`)."""
    return Redactor([*(environ.get(n, "") for n in SLACK_SECRET_ENVS), *store_secrets(environ),
                     *(dsn_password(d) for d in dsns)])


def redactor_for(config: Config, environ: Mapping[str, str]) -> Redactor:
    """The start-up Redactor: every configured secret value, never the names."""
    # Names people see everywhere (environments, services) are not secrets even when an env
    # file happens to hold one (APP_ENV=production).
    ordinary = {n.casefold() for n in (*config.environments, *config.services, *config.people)}
    values = [environ.get(n, "") for n in secret_env_names(config)] + store_secrets(environ)
    for path in _env_files(config):
        values += [v for v in env_file_values(path) if v.strip().casefold() not in ordinary]
    values += [_read_small(p) for p in _token_files(config)]
    pairs = []
    for name in config.services:
        for env in config.environments:
            build = config.service(name, env).build
            if build and build.username_env and build.password_env:
                pairs.append((environ.get(build.username_env, ""),
                              environ.get(build.password_env, "")))
    tracker = config.tracker.model_dump()
    if tracker.get("email_env") and tracker.get("token_env"):
        pairs.append((environ.get(str(tracker["email_env"]), ""),
                      environ.get(str(tracker["token_env"]), "")))
    return Redactor(values, pairs)


class RedactingFilter(logging.Filter):
    """On a handler: the message, its arguments and the traceback text leave redacted."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def install_log_filter(redact: Redactor) -> None:
    """Every handler that can show deploybot's records: the root's, deploybot's, lastResort."""
    handlers = list(logging.getLogger().handlers) + list(logging.getLogger("deploybot").handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(RedactingFilter(redact))


class RedactingReporter:
    """Wraps the configured Reporter: every text it is handed is redacted first. Errors (the
    outbox's DeliveryError) pass through unchanged."""

    def __init__(self, inner: Any, redact: Redactor) -> None:
        self._inner, self._redact = inner, redact

    def __getattr__(self, name: str) -> Any:  # every Reporter method, summary(), request() ...
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr
        return lambda *a, **kw: attr(*(self._redact.deep(x) for x in a),
                                     **{k: self._redact.deep(v) for k, v in kw.items()})


class RedactingTracker:
    """Wraps the configured Tracker: comments are redacted before they are posted."""

    def __init__(self, inner: Any, redact: Redactor) -> None:
        self._inner, self._redact = inner, redact

    def add_comment(self, ticket_id: str, markdown: str, **kwargs: Any) -> Any:
        return self._inner.add_comment(ticket_id, self._redact(markdown), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
