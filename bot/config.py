"""The YAML configuration file, validated into typed settings; every error names its path."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.envfile import env_file_problem
from bot.errors import ConfigError
from bot.freeze import FreezeWindow, zone
from bot.validation import error_lines

DEFAULT_PATH = "deploybot.yaml"

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Slack ids, which their owners cannot change (display names they can): users, user groups.
SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")
SLACK_GROUP_ID = re.compile(r"S[A-Z0-9]{2,}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


def _check_line_regexes(items: list[str] | None, if_empty_matches: str) -> list[str] | None:
    """Regexes matched against single lines: valid, and none matching an empty line."""
    for i, item in enumerate(items or []):
        try:
            _check_regex(item)
        except ValueError as exc:
            raise ValueError(f"item {i} ({item!r}): {exc}") from None
        if re.search(item, "", re.IGNORECASE) is not None:
            raise ValueError(f"item {i} ({item!r}) matches an empty line: {if_empty_matches}")
    return items


class CommentRule(Strict):
    """Which comment counts: a regular expression and, optionally, who may write it.

    The pattern is matched line by line (bot/approvals.py); a line it matches is an approval only
    when none of the `deny` regexes matches the same line.
    """

    pattern: str
    authors: list[str] = Field(default_factory=list)  # empty: anyone but the requester
    # The gate's name at the start of a line ("CQ", "QA"): such a line with retraction wording
    # ("CQ withdrawn", "QA failed") takes an earlier approval back. None: no retractions read.
    subject: str | None = None
    # Regexes (matched case-insensitively, anywhere in the line) that make a matching line NOT an
    # approval: "QA PASS criteria not met", "CQ: approved?". None: bot.approvals.DEFAULT_DENY
    # (negations, failures, questions, conditionals, pending, partial, revoked, ...). A list
    # replaces the defaults entirely; [] denies nothing, so any matching line approves: dangerous.
    deny: list[str] | None = None

    @field_validator("pattern")
    @classmethod
    def _valid_pattern(cls, v: str) -> str:
        return _check_regex(v)

    @field_validator("subject")
    @classmethod
    def _valid_subject(cls, v: str | None) -> str | None:
        return v if v is None else _check_regex(v)

    @field_validator("deny")
    @classmethod
    def _valid_deny(cls, v: list[str] | None) -> list[str] | None:
        return _check_line_regexes(v, "it would deny every line")


class TrackerRules(Strict):
    ready_status: str = "Ready for Production"
    deployed_status: str | None = "Deployed"
    # Approvals are read line by line (bot/approvals.py). The default wording must start the line,
    # after optional bullets, emphasis, emoji or punctuation ("**QA PASS**", "✅ QA passed",
    # "- CQ: approved", "1. QA: OK"), but never after a word ("Carol said QA PASS"), a quote mark
    # or a task box ("- [x] QA pass confirmed" is deploybot's own record). Plain "LGTM" does not
    # count: on a ticket it does not say which gate it passes; "CQ: LGTM" does. (?m) only matters
    # to code that still searches whole bodies; bot/approvals.py matches each line on its own.
    cq_approval: CommentRule = CommentRule(pattern=(
        r"(?im)^(?:[^\w\[\]>|]|_)*(?:(?::[a-z0-9_+-]+:|\d{1,2}[.)])(?:[^\w\[\]>|]|_)*)*"
        r"(?:CQ|code[\s-]*(?:review|quality))(?:\s+(?:review|status|result|verdict))?"
        r"[\s:=*_\-–—]*"
        r"(?:approved|pass(?:ed|es)?|ok(?:ay)?|lgtm|signed[\s-]*off|[✅✔✓☑]\ufe0f?"
        r"|:(?:white_check_mark|heavy_check_mark|ballot_box_with_check):)(?![^\W_])"),
        subject=r"(?i)^(?:[^\w\[\]>|]|_)*(?:CQ|code[\s-]*(?:review|quality))\b")
    qa_pass: CommentRule = CommentRule(pattern=(
        r"(?im)^(?:[^\w\[\]>|]|_)*(?:(?::[a-z0-9_+-]+:|\d{1,2}[.)])(?:[^\w\[\]>|]|_)*)*"
        r"QA(?:\s+(?:sign[\s-]?off|status|result|verdict))?[\s:=*_\-–—]*"
        r"(?:pass(?:ed|es)?|ok(?:ay)?|approved|signed[\s-]*off|[✅✔✓☑]\ufe0f?"
        r"|:(?:white_check_mark|heavy_check_mark|ballot_box_with_check):)(?![^\W_])"),
        subject=r"(?i)^(?:[^\w\[\]>|]|_)*QA\b")
    notes: CommentRule = CommentRule(pattern=r"(?im)^\s*deploy(ment)?\s+notes?\s*:")
    # A line announcing a new build makes earlier approvals stale. Any of these regexes, anywhere
    # in a line, case-insensitively; a single string (older files) is read as a one-item list,
    # null as none. They must not match deploybot's own comments (the record says "Version:",
    # "Previous Version:", "taking the new version down"; a blocker says "a new build was
    # announced after it").
    new_build: list[str] = Field(default_factory=lambda: [
        # "new build 1.4.3 is on staging", "FYI: new version deployed", "new image pushed"
        r"\b(?:new|fresh|updated|another)\s+(?:builds?|versions?|images?|releases?"
        r"|release\s+candidate|rc|artifacts?|packages?|tags?|commits?)\b"
        r"(?!\s+(?:was\s+announced\s+after\b|down\b))",
        r"\bre-?built\b|\bre-?build\s+(?:is\s+)?(?:done|finished|complete|ready|up)\b",
        # "build 42 is up", "v1.4.3 is now on staging", "rc2 has been deployed"
        r"\b(?:build|version|release|image|rc)\s*#?\s*v?\d[\w.+-]{0,40}\s+(?:is|has\s+been|was)\s+"
        r"(?:now\s+)?(?:up|out|ready|available|live|deployed|pushed|released|on\s+\w)",
        r"\bv?\d+\.\d+[\w.+-]{0,40}\s+(?:is|has\s+been|was)\s+(?:now\s+)?(?:up|out|live|deployed"
        r"|released|available|on\s+(?:staging|qa|test|uat|dev|preprod|pre-prod)\b)",
        r"\b(?:force[\s-]?)?pushed\b",  # "pushed a fix", "pushed 2 commits"
        r"\bre-?deploy(?:ed|ing)?\b",  # "re-deployed to staging"
        r"\b(?:hot)?fix(?:es)?\s+(?:is\s+|are\s+|was\s+|has\s+been\s+|got\s+)?"
        r"(?:merged|landed|deployed)\b",
        r"\b(?:hot)?fix(?:es)?\s+(?:is|are|has\s+been)\s+(?:in|up|out|live)\b",
        r"\bdeployed\s+(?:v(?:ersion)?\s*)?\d[\w.+-]{0,40}\s+(?:to|on)\b",  # "deployed 1.4.3 to QA"
        r"\bbump(?:ed)?\s+(?:the\s+)?(?:version|build|image|tag)\b|\bbumped\s+(?:it\s+)?to\s+v?\d",
    ])
    # Where service@version comes from when the command does not say.
    version_field: str | None = None
    version_pattern: str = r"(?i)\bdeploy:\s*(?P<service>[a-z0-9][a-z0-9_-]*)@(?P<version>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})"

    @model_validator(mode="before")
    @classmethod
    def _default_patterns(cls, data: Any) -> Any:
        """`cq_approval: {authors: [bob]}` keeps the default wording and only names authors."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in ("cq_approval", "qa_pass", "notes"):
            rule = data.get(name)
            if isinstance(rule, dict) and "pattern" not in rule:
                default = cls.model_fields[name].default
                data[name] = {"subject": default.subject, **rule, "pattern": default.pattern}
        return data

    @field_validator("new_build", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [] if v is None else [v] if isinstance(v, str) else v

    @field_validator("new_build")
    @classmethod
    def _valid_new_build(cls, v: list[str]) -> list[str]:
        return _check_line_regexes(v, "every line would announce a new build")

    @field_validator("version_pattern")
    @classmethod
    def _valid_regexes(cls, v: str | None) -> str | None:
        return v if v is None else _check_regex(v)


class TrackerSettings(BaseModel):
    # Adapters carry their own keys (url, project, token_env, ...), so extra keys are allowed here.
    model_config = ConfigDict(extra="allow")

    kind: str = "local"
    url: AnyHttpUrl | None = None
    token_env: str | None = None
    timeout: float = Field(default=10.0, gt=0, le=120)
    rules: TrackerRules = TrackerRules()
    # The tracker's text formatting where it has a choice (Redmine; None: textile, its default).
    markup: Literal["textile", "common_mark"] | None = None

    @model_validator(mode="after")
    def _remote_needs_url(self) -> "TrackerSettings":
        if self.kind != "local" and self.url is None:
            raise ValueError(f"tracker kind {self.kind!r} needs 'url'")
        return self

    @model_validator(mode="after")
    def _no_secret_in_the_file(self) -> "TrackerSettings":
        # Never quote the value in these messages: it may be the token itself.
        for key in sorted(self.model_extra or {}):
            if key.lower() in _SECRET_KEYS:
                raise ValueError(
                    f"'{key}' would put a secret in the configuration file; export it in an "
                    f"environment variable and name that variable in '{key}_env' "
                    "(e.g. token_env: REDMINE_TOKEN)")
        for key, value in self.model_dump().items():
            if key.endswith("_env") and value is not None and not _names_a_variable(value):
                raise ValueError(
                    f"'{key}' must be the NAME of an environment variable (letters, digits, _), "
                    f"like REDMINE_TOKEN, not the secret itself (the value is not shown); "
                    f"export the secret in that variable")
        return self


# Keys that would hold a tracker credential itself rather than the name of its variable.
_SECRET_KEYS = {"token", "api_token", "api_key", "apikey", "password", "secret"}
# Shapes of real tokens that also happen to be valid variable names.
_TOKEN_PREFIXES = ("ghp_", "gho_", "ghs_", "ghu_", "github_pat_", "lin_api_", "xox")


def _names_a_variable(value: Any) -> bool:
    return (isinstance(value, str) and ENV_NAME_RE.fullmatch(value) is not None
            and not value.lower().startswith(_TOKEN_PREFIXES))


# Tags that name whatever was pushed last: deploying one is not deploying a known build.
DEFAULT_MUTABLE_TAGS = ["latest", "main", "master", "develop", "dev", "stable", "edge", "nightly",
                        "head", "trunk", "current", "release", "prod", "production", "staging",
                        "test", "canary", "snapshot"]


class VersionPolicy(Strict):
    """Which versions an environment accepts. Production refuses mutable tags by default."""

    allow_mutable: bool | None = None  # None: refused where `production: true`, allowed elsewhere
    mutable_tags: list[str] = Field(default_factory=lambda: list(DEFAULT_MUTABLE_TAGS))
    # Also mutable: tags matching this (e.g. '-SNAPSHOT$' or '^pr-'); matched case-insensitively.
    mutable_pattern: str | None = r"(?i)(^|[-_.])(snapshot|latest)$"

    @field_validator("mutable_pattern")
    @classmethod
    def _valid_pattern(cls, v: str | None) -> str | None:
        return v if v is None else _check_regex(v)


class Environment(Strict):
    approvers: list[str] = Field(default_factory=list)  # people (names or Slack ids) who may approve
    # Who may request deployments and rollbacks here; empty: anyone (see the README's table).
    deployers: list[str] = Field(default_factory=list)
    versions: VersionPolicy = VersionPolicy()
    approver_groups: list[str] = Field(default_factory=list)  # Slack user-group ids (S…)
    approvals_required: int = Field(default=0, ge=0, le=5)
    allow_self_approval: bool = False
    lock_scope: Literal["environment", "service"] = "environment"
    production: bool = False
    # Scheduling (bot/scheduler.py, bot/freeze.py): no deploys in these windows without break-glass;
    # a deployment's lock expires this many seconds after its last heartbeat.
    freeze: list[FreezeWindow] = Field(default_factory=list)
    lock_ttl: float = Field(default=900.0, gt=0, le=86400)


class HttpAuth(Strict):
    """How to reach a service's health/smoke/metrics URLs when they need credentials,
    e.g. through the Kubernetes API server's service proxy."""

    bearer_token_env: str | None = None  # NAME of the env var holding the token
    bearer_token_file: str | None = None  # a file holding it (a service account token)
    ca_file: str | None = None  # CA bundle for an https URL with a private CA

    @field_validator("ca_file")
    @classmethod
    def _ca_file_readable(cls, v: str | None) -> str | None:
        # Checked at load: otherwise the first probe (deploy, status, check-config --live)
        # finds out, deep inside the TLS set-up.
        if v is None:
            return v
        path = Path(v)
        if not path.exists():
            raise ValueError(f"{v} does not exist (the CA bundle for the https URLs)")
        if not path.is_file():
            raise ValueError(f"{v} is not a file (give the CA bundle's PEM file)")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{v} cannot be read by this user")
        return v

    @model_validator(mode="after")
    def _one_token_source(self) -> "HttpAuth":
        if self.bearer_token_env and self.bearer_token_file:
            raise ValueError("give bearer_token_env or bearer_token_file, not both")
        return self


class Health(Strict):
    url: AnyHttpUrl
    # "/health/detailed" replaces the URL's path; "detailed" (no leading /) is appended to it.
    detailed_path: str | None = "/health/detailed"
    timeout: float = Field(default=5.0, gt=0, le=60)


class SmokeTest(Strict):
    url: AnyHttpUrl
    expect_status: int = Field(default=200, ge=100, le=599)
    contains: str | None = None


class Dependency(Strict):
    name: str
    url: AnyHttpUrl


class Verification(Strict):
    timeout: float = Field(default=30.0, ge=0, le=3600)  # bounded wait for the new version
    interval: float = Field(default=1.0, gt=0, le=60)
    # Up and failing (5xx, engine says unhealthy or exited) this many probes in a row ends the
    # wait early; None waits out the timeout. Not up yet (refused, starting) never counts.
    failing_probes: int | None = Field(default=3, ge=1, le=1000)


class WatchRules(Strict):
    """When the watch window rolls a deployment back; None switches a rule off."""

    health_failures: int | None = Field(default=3, ge=1, le=100)  # consecutive failed probes
    smoke: bool = True  # any smoke test answering wrong
    error_rate_points: float | None = Field(default=5.0, ge=0, le=100)  # over baseline, in % pts
    error_rate_min_probes: int = Field(default=10, ge=1, le=100_000)  # fewer: too noisy to judge
    latency_factor: float | None = Field(default=3.0, ge=1, le=1000)  # p95 over baseline p95 ×
    latency_floor_ms: float = Field(default=50.0, ge=0, le=60_000)  # p95 below this never trips
    new_log_errors: int | None = Field(default=0, ge=0, le=100_000)  # new patterns allowed
    log_error_pattern: str = r"(?i)\b(error|fatal|panic|exception|traceback)\b"
    cpu_percent: float | None = Field(default=None, gt=0, le=100_000)
    memory_mb: float | None = Field(default=None, gt=0, le=10_000_000)

    @field_validator("log_error_pattern")
    @classmethod
    def _valid_pattern(cls, v: str) -> str:
        return _check_regex(v)


class Watch(Strict):
    """Baseline before the deploy and the watch window after it (seconds)."""

    # 0 by default: existing services keep the one-shot verification; set e.g. 180 to watch.
    window: float = Field(default=0.0, ge=0, le=3600)
    interval: float = Field(default=1.0, gt=0, le=60)
    baseline_window: float = Field(default=0.0, ge=0, le=600)  # 0: one round of samples
    inconclusive_fails: bool = False  # an unreachable source: reported; roll back only if True
    rules: WatchRules = WatchRules()


class PrometheusQueries(Strict):
    """PromQL returning one number each; any may be left out."""

    error_rate: str | None = None  # a ratio 0..1
    latency_p95: str | None = None  # seconds
    cpu: str | None = None  # percent of one core
    memory: str | None = None  # bytes


class PrometheusSettings(Strict):
    url: AnyHttpUrl
    queries: PrometheusQueries = PrometheusQueries()
    timeout: float = Field(default=5.0, gt=0, le=60)


HOST_PORT_RE = re.compile(r"^(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")


class ProxySettings(Strict):
    """Zero-downtime switches for a Docker or Compose service: HAProxy in front of its containers
    (docs/proxy.md, "Why HAProxy"). The new version starts beside the old one on a port of
    its own (published on 127.0.0.1, chosen by the engine), is checked there directly, then the
    proxy sends new requests to it; the old one drains and is kept for an instant rollback."""

    listen: str  # where the service's traffic arrives, HOST:PORT ("127.0.0.1:18080", "0.0.0.0:80")
    port: int = Field(ge=1, le=65535)  # the container port the application listens on
    drain: float = Field(default=10.0, ge=0, le=3600)  # s the old version finishes in-flight requests
    run: Literal["container", "host"] = "container"  # container: deploybot runs it; host: you do
    image: str = "haproxy:2.6"  # run: container
    container_name: str = "deploybot-proxy"  # run: container; shared by the services of one dir
    dir: str = "/var/lib/deploybot/proxy"  # its configuration files and runtime sockets
    timeout: float = Field(default=5.0, gt=0, le=60)  # per runtime API call

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        m = HOST_PORT_RE.match(v)
        if not m or not 1 <= int(m["port"]) <= 65535:
            raise ValueError("HOST:PORT where the proxy accepts the service's traffic, "
                             "e.g. 127.0.0.1:18080 or 0.0.0.0:80")
        return v

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("an absolute path (the proxy container mounts it)")
        return v


class DockerHost(Strict):
    """One engine of a service deployed on several hosts (README, "Several Docker hosts")."""

    engine: str  # unix:///path, tcp://HOST:PORT or ssh://USER@HOST
    # Where this host's published ports are reached: replaces the host part of the service's
    # health and smoke URLs for this host's checks. None: the engine's host name (tcp, ssh),
    # the URLs as written (unix). A loopback address (127.x) also moves the ports published on
    # a loopback IP onto it, so two engines on one machine do not both bind 127.0.0.1:PORT.
    address: str | None = None

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        if not re.match(r"^(unix|tcp|ssh)://\S+$", v):
            raise ValueError(f"{v!r}: an engine address unix:///path, tcp://HOST:PORT or "
                             "ssh://USER@HOST")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9a-fA-F:.]+\]", v):
            raise ValueError(f"{v!r}: a host name or IP address, without scheme or port")
        return v

    @property
    def reached_at(self) -> str | None:
        """`address`, else the host name of a tcp:// or ssh:// engine; None for unix://."""
        if self.address or self.engine.startswith("unix://"):
            return self.address
        return urlsplit(self.engine).hostname


def _loopback(host: str) -> bool:
    return host.strip("[]") in ("localhost", "::1") or host.startswith("127.")


def _engine_identity(engine: str) -> str:
    """One spelling per engine: a socket path resolved (`/var/run` is `/run`, a trailing `/`),
    host names in lower case, the default ssh port written out."""
    parts = urlsplit(engine)
    if parts.scheme == "unix":
        return "unix://" + os.path.realpath(parts.netloc + parts.path)
    port = parts.port if parts.port is not None else (22 if parts.scheme == "ssh" else "")
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{(parts.hostname or '').lower()}:{port}"


class DockerBackendSettings(Strict):
    kind: Literal["docker"] = "docker"
    container_name: str | None = None
    ports: dict[str, str] = Field(default_factory=dict)  # "8080/tcp" -> "127.0.0.1:18080"
    network: str | None = None
    restart_policy: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"
    env_file: str | None = None
    pull: Literal["always", "missing", "never"] = "missing"
    stop_timeout: int = Field(default=10, ge=0, le=600)
    healthcheck: list[str] | None = None  # CMD argument list for the container's own health check
    command: list[str] | None = None
    timeout: float = Field(default=60.0, gt=0, le=3600)  # per Docker API call
    proxy: ProxySettings | None = None  # zero-downtime deploys behind HAProxy (instead of ports)
    # Several Docker engines (unix://, tcp://, ssh://user@host): deployed `batch` hosts at a time,
    # each batch verified before the next; None: the one engine of DOCKER_HOST.
    # An entry is the engine, or {engine:, address:} (DockerHost).
    hosts: list[DockerHost] | None = None
    batch: int = Field(default=1, ge=1, le=100)

    @field_validator("hosts", mode="before")
    @classmethod
    def _engine_alone(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"engine": h} if isinstance(h, str) else h for h in v]
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: list[DockerHost] | None) -> list[DockerHost] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("name at least one engine, or leave hosts out")
        seen: dict[str, str] = {}
        for h in v:
            key = _engine_identity(h.engine)
            if key in seen:
                same = (f"{h.engine!r}" if seen[key] == h.engine
                        else f"{seen[key]!r} and {h.engine!r} name the same engine")
                raise ValueError(f"an engine is named twice: {same}; each host once")
            seen[key] = h.engine
        return v

    @model_validator(mode="after")
    def _proxy_or_ports(self) -> "DockerBackendSettings":
        if self.proxy is not None:
            clash = [k for k in self.ports if k.split("/")[0] == str(self.proxy.port)]
            if clash:
                raise ValueError(
                    f"ports: {clash[0]} is the proxy's port: with proxy: the proxy listens on "
                    f"{self.proxy.listen} and each version gets a port of its own; remove it "
                    "from ports (README, \"From ports: to proxy:\")")
            if self.hosts and len(self.hosts) > 1:
                raise ValueError("proxy: works with one engine; several hosts each need their "
                                 "own proxy, which deploybot does not manage yet (leave proxy "
                                 "out to deploy host by host with published ports)")
        return self


class OtherBackendSettings(BaseModel):
    """Compose and Kubernetes: their adapters validate their own options."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["compose", "kubernetes"]


class ImageBuild(Strict):
    """Build the image from source before deploying: docker build, tag VERSION and latest, push.

    The service's `image` names the repository pushed to (e.g. registry.example:5000/billing).
    """

    context: str  # directory with the Dockerfile, relative to the working directory
    dockerfile: str | None = None
    push: bool = True
    username_env: str | None = None  # env var holding the registry user name
    password_env: str | None = None  # env var holding the registry password or token
    build_args: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=600.0, gt=0, le=7200)


class Service(Strict):
    image: str
    build: ImageBuild | None = None
    backend: Annotated[
        DockerBackendSettings | OtherBackendSettings, Field(discriminator="kind")
    ] = Field(default_factory=DockerBackendSettings)
    environments: list[str] | None = None  # where it may be deployed; None = all
    health: Health | None = None
    http_auth: HttpAuth | None = None  # applied to this service's health, smoke and metrics URLs
    smoke: list[SmokeTest] = Field(default_factory=list)
    required_env: list[str] = Field(default_factory=list)
    dependencies: list[Dependency] = Field(default_factory=list)
    migration_check: list[str] | None = None  # an argument list, never a shell string
    migration_timeout: float = Field(default=120.0, gt=0, le=3600)
    lock_scope: Literal["environment", "service"] | None = None  # overrides the environment's
    verify: Verification = Verification()
    watch: Watch = Watch()
    prometheus: PrometheusSettings | None = None
    metrics_url: AnyHttpUrl | None = None  # the service's own Prometheus text endpoint
    metrics_required: bool = False  # setup check: a missing metrics endpoint fails, not warns
    integrity_check: list[str] | None = None  # argument list; non-zero exit rolls back
    integrity_timeout: float = Field(default=30.0, gt=0, le=600)

    @model_validator(mode="before")
    @classmethod
    def _backend_kind_defaults_to_docker(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("backend"), dict):
            data = {**data, "backend": {"kind": "docker", **data["backend"]}}
        return data

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._/:-]*", v) or v.endswith(":"):
            raise ValueError("not a Docker image name (lower case, no tag)")
        last = v.rsplit("/", 1)[-1]
        if ":" in last:
            raise ValueError("give the image without a tag; the version is the tag")
        return v

    @field_validator("migration_check", "integrity_check")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("an argument list needs at least the program")
        return v

    @model_validator(mode="after")
    def _hosts_reach_what_they_check(self) -> "Service":
        # A port published on 127.0.0.1 of another machine cannot answer deploybot's checks
        # there (found walking the README, whose own example did that).
        backend = self.backend
        if not isinstance(backend, DockerBackendSettings) or not backend.hosts:
            return self
        urls = [str(self.health.url)] if self.health else []
        urls += [str(t.url) for t in self.smoke]
        checked = {urlsplit(u).port or (443 if u.startswith("https") else 80) for u in urls}
        local_only = sorted(int(port) for ip, _, port in
                            (str(p).rpartition(":") for p in backend.ports.values())
                            if _loopback(ip) and port.isdigit() and int(port) in checked)
        for h in backend.hosts:
            at = h.reached_at
            if local_only and at and not _loopback(at):
                raise ValueError(
                    f"backend.hosts: {h.engine} is checked at {at}, but port "
                    f"{', '.join(map(str, local_only))} is published on a loopback address "
                    f"only, which {at} does not reach; publish it on every interface "
                    "(\"8080\": \"18080\") or on that host's address")
        return self

    @model_validator(mode="after")
    def _env_file_is_regular(self) -> "Service":
        # /proc/self/environ, a FIFO or a device would put deploybot's own state in a container;
        # a file that does not exist yet is reported by the dependencies check.
        path = getattr(self.backend, "env_file", None)
        if path:
            problem = env_file_problem(str(path), must_exist=False)
            if problem:
                raise ValueError(f"backend.{problem}")
        return self


class SlackSettings(Strict):
    channels: list[str] | None = None  # where commands are accepted; None: just `channel`
    alert_mention: str = "<!here>"  # prefix of rollback alerts ("" for none)
    app_home: bool = True


class Person(Strict):
    """One person: the key is their name in deploybot; these are their accounts elsewhere."""

    slack: str | None = None  # Slack user id, like U012AB3CD (never a display name)
    # Account on the configured tracker, as the tracker identifies it: Redmine login or numeric
    # id, Jira Cloud accountId, Jira DC username, GitHub/GitLab login, Linear id or handle.
    tracker: str | None = None
    os: str | None = None  # OS login for the terminal; default: the person's key

    @field_validator("slack")
    @classmethod
    def _slack_id(cls, v: str | None) -> str | None:
        if v is not None and not SLACK_USER_ID.fullmatch(v):
            raise ValueError("not a Slack user id (like U012AB3CD; a display name can be "
                             "changed by its owner and is never used)")
        return v


class Terminal(Strict):
    """Who the terminal says you are."""

    # --as / DEPLOYBOT_USER / --approve-as may name someone other than the OS login's person
    # only on a shared operations box where this is set; the audit trail keeps both names.
    trust_as: bool = False


class HealthSummary(Strict):
    """Post every service's state per environment to the channel every so often."""

    every_minutes: float = Field(default=60.0, ge=1, le=10080)


class OutboxSettings(Strict):
    """Delivery of ticket comments, ticket moves and Slack posts (bot/outbox.py)."""

    retry_first_seconds: float = Field(default=5.0, gt=0, le=3600)  # doubled on every failure
    retry_max_seconds: float = Field(default=900.0, gt=0, le=86400)  # up to this
    stuck_minutes: float = Field(default=30.0, ge=1, le=10080)  # then one alert in the channel
    command_budget_seconds: float = Field(default=5.0, ge=0, le=300)  # a CLI command's delivery


class Config(Strict):
    channel: str = "#standup"
    timezone: str = "UTC"  # what "22:00" and freeze windows mean
    schedule_grace_minutes: float = Field(default=15.0, ge=0, le=1440)  # run missed jobs this late
    health_summary: HealthSummary | None = None
    default_environment: str | None = None  # None: the first environment in the file
    tracker: TrackerSettings = TrackerSettings()
    environments: dict[str, Environment]
    services: dict[str, Service]
    people: dict[str, Person] = Field(default_factory=dict)
    admins: list[str] = Field(default_factory=list)  # people who may cancel, unlock, break locks
    terminal: Terminal = Terminal()
    slack: SlackSettings = SlackSettings()
    outbox: OutboxSettings = OutboxSettings()
    # Environment variables migration checks and integrity checks may see, besides PATH, HOME,
    # LANG, TZ and LC_*: they never get deploybot's own tokens.
    child_env: list[str] = Field(default_factory=list)
    # More variables whose values are secrets (a DSN password ...): redacted from all output.
    secret_env: list[str] = Field(default_factory=list)
    # Per environment overrides of service settings, deep-merged before validation.
    source_path: str | None = None

    @field_validator("environments", "services")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a valid name (lower case letters, digits, - and _)")
        if not v:
            raise ValueError("at least one is needed")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("child_env", "secret_env")
    @classmethod
    def _env_names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not ENV_NAME_RE.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return v

    @model_validator(mode="after")
    def _children_get_no_secrets(self) -> "Config":
        own = {str(v) for k, v in self.tracker.model_dump().items() if k.endswith("_env") and v}
        own |= set(self.secret_env)
        for name in self.child_env:
            if name.startswith("SLACK_") or name in own:
                raise ValueError(f"child_env: {name} holds one of deploybot's own secrets; "
                                 "child processes never get it")
        return self

    @model_validator(mode="after")
    def _cross_refs(self) -> "Config":
        for name, svc in self.services.items():
            for env in svc.environments or []:
                if env not in self.environments:
                    raise ValueError(f"services.{name}.environments: unknown environment {env!r}")
        if self.default_environment and self.default_environment not in self.environments:
            raise ValueError(f"default_environment: unknown environment {self.default_environment!r}")
        for name in self.people:
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", name):
                raise ValueError(f"people: {name!r} is not a valid name (lower case letters, "
                                 "digits, '.', '-' and '_')")
        seen: dict[tuple[str, str], str] = {}
        for name, person in self.people.items():
            for kind, value in (("slack", person.slack), ("tracker", person.tracker),
                                ("os", person.os or name)):
                if value and (kind, value.casefold()) in seen:
                    raise ValueError(f"people.{name}.{kind}: {value!r} is also "
                                     f"{seen[(kind, value.casefold())]}'s; one account, one person")
                if value:
                    seen[(kind, value.casefold())] = name
        for who in self.admins:
            if self.person_named(who) is None:
                raise ValueError(f"admins: {who!r} is not in people:")
        return self

    @property
    def default_env(self) -> str:
        return self.default_environment or next(iter(self.environments))

    def service(self, name: str, environment: str) -> Service:
        return self._resolved[(name, environment)]

    # -- people ----------------------------------------------------------------------------------

    def person_named(self, who: str | None) -> str | None:
        """The people: key for a name or a Slack user id; None when nobody is known by it.

        Only deploybot's own names and Slack ids (which their owners cannot change) are
        recognised here: tracker accounts go through the tracker, OS logins through person_by_os.
        """
        if not who:
            return None
        key = who.strip().lstrip("@")
        for name, person in self.people.items():
            if key.casefold() == name.casefold() or (person.slack and key == person.slack):
                return name
        return None

    def person_by_os(self, login: str) -> str | None:
        for name, person in self.people.items():
            if (person.os or name) == login:
                return name
        return None

    def canonical(self, who: str) -> str:
        """How a stored identity reads: the person's name when known, else what was stored."""
        return self.person_named(who) or who

    def same_person(self, a: str | None, b: str | None) -> bool:
        if not a or not b:
            return False
        return self.canonical(a).casefold() == self.canonical(b).casefold()

    def lock_scope(self, service: str, environment: str) -> str:
        svc = self.services[service]
        scope = svc.lock_scope or self.environments[environment].lock_scope
        return f"service:{environment}:{service}" if scope == "service" else f"env:{environment}"

    def deployable(self, service: str, environment: str) -> bool:
        svc = self.services[service]
        return svc.environments is None or environment in svc.environments

    _resolved: dict[tuple[str, str], Service] = {}


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse(data: Any, source: str = "<config>") -> Config:
    """Validate a loaded YAML document; ConfigError lists every problem with its path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the file must be a mapping with environments and services")
    data = dict(data)
    overrides = data.pop("overrides", {}) or {}
    errors: list[str] = []
    try:
        cfg = Config.model_validate({**data, "source_path": source})
    except ValidationError as exc:
        raise ConfigError(
            f"{source} has {len(exc.errors())} error(s):\n" + "\n".join(error_lines(exc))
        ) from None
    resolved: dict[tuple[str, str], Service] = {}
    if not isinstance(overrides, dict):
        errors.append("overrides: must map environment -> service -> settings")
        overrides = {}
    for env, per_service in overrides.items():
        if env not in cfg.environments:
            errors.append(f"overrides.{env}: unknown environment")
            continue
        for svc_name in (per_service or {}):
            if svc_name not in cfg.services:
                errors.append(f"overrides.{env}.{svc_name}: unknown service")
    for svc_name, svc in cfg.services.items():
        raw = data["services"][svc_name]
        for env in cfg.environments:
            patch = ((overrides.get(env) or {}).get(svc_name)) or {}
            if not patch:
                resolved[(svc_name, env)] = svc
                continue
            try:
                resolved[(svc_name, env)] = Service.model_validate(_deep_merge(raw, patch))
            except ValidationError as exc:
                errors.extend(error_lines(exc, ("overrides", env, svc_name)))
    if errors:
        raise ConfigError(f"{source} has {len(errors)} error(s):\n" + "\n".join(errors))
    cfg._resolved = resolved
    return cfg


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("DEPLOYBOT_CONFIG") or DEFAULT_PATH)
    if not path.exists():
        raise ConfigError(
            f"configuration file {path} not found",
            hint="create it (see examples/deploybot.yaml) or pass --config / set DEPLOYBOT_CONFIG",
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    cfg = parse(data, str(path))
    return cfg
