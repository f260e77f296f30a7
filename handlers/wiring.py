"""The one place that turns the configuration into a tracker, backends and a pipeline."""

from __future__ import annotations

import os
from typing import Mapping

from bot.childenv import without_secrets
from bot.config import Config
from bot.errors import ConfigError
from bot.pipeline import Pipeline
from bot.ports import Approver, DeployBackend, Reporter, Tracker
from bot.redact import (STORE_SECRET_ENVS, Redactor, RedactingReporter, RedactingTracker,
                        install_log_filter, redactor_for, secret_env_names)
from bot.store import Store
from handlers import database_url
from handlers.database_url import DB_ENV


def open_store(environ: Mapping[str, str] | None = None, clock=None) -> Store:
    """The store DEPLOYBOT_DB names (handlers/database_url.py: a path, sqlite:..., postgresql://)."""
    environ = os.environ if environ is None else environ
    target = database_url.store_target(database_url.parse(environ.get(DB_ENV)))
    return Store(target, clock=clock) if clock is not None else Store(target)


def build_tracker(config: Config, store: Store, environ: Mapping[str, str]) -> Tracker:
    kind = config.tracker.kind
    if kind == "local":
        from backends.trackers.local import LocalTracker

        return LocalTracker(store)
    try:
        from backends.trackers import KINDS
    except ImportError:
        KINDS = {}
    if kind not in KINDS:
        raise ConfigError(f"tracker.kind: unknown tracker {kind!r}",
                          hint=f"known: local{', ' + ', '.join(KINDS) if KINDS else ''}")
    return KINDS[kind](config.tracker.model_dump(mode="json"), environ)


def backend_factory(config: Config, environ: Mapping[str, str] | None = None):
    """service, environment -> DeployBackend, built once per pair and reused. Backend tools
    (docker compose) run without deploybot's own tokens."""
    from backends.deploy import build_backend

    cache: dict[tuple[str, str], DeployBackend] = {}
    environ = os.environ if environ is None else environ
    # Nor the store's password (in a PostgreSQL DSN, or libpq's PGPASSWORD).
    tools_environ = without_secrets(environ,
                                    [*secret_env_names(config, declared=False), DB_ENV,
                                     *STORE_SECRET_ENVS])

    def backend_for(service: str, environment: str) -> DeployBackend:
        key = (service, environment)
        if key not in cache:
            cache[key] = build_backend(service, environment, config.service(service, environment),
                                       environ=tools_environ, credentials=environ)
        return cache[key]

    return backend_for


def start_redaction(config: Config, store: Store | None,
                    environ: Mapping[str, str]) -> Redactor:
    """The configured secrets, redacted from the store and the logs from here on."""
    redact = redactor_for(config, environ)
    if store is not None:
        store.redact = redact
    install_log_filter(redact)
    return redact


def build_pipeline(config: Config, store: Store, *, reporter: Reporter, approver: Approver,
                   environ: Mapping[str, str] | None = None, tracker: Tracker | None = None,
                   backend_for=None, probe=None, clock=None,
                   durable_posts: bool = False, redact: Redactor | None = None) -> Pipeline:
    """The configured pipeline; `tracker`, `backend_for`, `probe` and `clock` replace the
    configured ones (tests and embedders swap the edges, never the core). `durable_posts`:
    the reporter's alert/blocked/finished go through the outbox (Slack, not the terminal).
    Every text it stores, reports or comments is redacted (`redact`: built from the config
    when None)."""
    from backends.deploy import build_image_builder
    from handlers.lazy import Deferred

    environ = os.environ if environ is None else environ
    if redact is None:
        redact = start_redaction(config, store, environ)
    else:
        store.redact = redact
    tracker = RedactingTracker(tracker or build_tracker(config, store, environ), redact)
    reporter = RedactingReporter(reporter, redact)
    pipeline = Pipeline(config=config, store=store,
                        tracker=tracker,
                        backend_for=backend_for or backend_factory(config, environ),
                        reporter=reporter,
                        approver=approver, probe=probe or _probe(config, environ),
                        environ=environ, image_builder=Deferred(
                            lambda: build_image_builder(environ), "DockerImageBuilder"),
                        clock=clock, durable_posts=durable_posts,
                        metrics_for=metrics_factory(config), redact=redact)
    return pipeline


def _probe(config: Config, environ: Mapping[str, str]):
    """Made on the first probe (httpx and its SSL context are slow to load; `status` probes
    nothing), unless a service has `http_auth`: its CA bundle is checked before anything runs."""
    from handlers.lazy import Deferred

    def made():
        from backends.monitoring.probe import HttpxProbe

        return HttpxProbe.for_config(config, environ)

    if any(config.service(name, env).http_auth
           for name in config.services for env in config.environments):
        return made()
    return Deferred(made, "HttpxProbe")


def metrics_factory(config: Config):
    """service, environment -> the service's Prometheus (None when it has none configured)."""
    cache: dict[tuple[str, str], object] = {}

    def metrics_for(service: str, environment: str):
        settings = config.service(service, environment).prometheus
        if settings is None:
            return None
        if (service, environment) not in cache:
            from backends.monitoring.prometheus import PrometheusSource  # httpx: when used

            cache[(service, environment)] = PrometheusSource(str(settings.url), settings.timeout)
        return cache[(service, environment)]

    return metrics_for


# -- this process as one of several replicas (bot/leadership.py) ---------------------------------

LEADER_POLL_ENV = "DEPLOYBOT_LEADER_POLL_SECONDS"
STALE_ENV = "DEPLOYBOT_REPLICA_STALE_SECONDS"


def _seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    text = environ.get(name) or ""
    try:
        value = float(text) if text else default
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 3600:  # also nan
        raise ConfigError(f"{name}={text!r} is not a number of seconds from 0.1 to 3600")
    return value


def leadership_for(store: Store):
    from bot.leadership import SoleLeader

    if store.db.dialect == "postgresql":
        from backends.stores.pg_leader import PostgresLeadership

        return PostgresLeadership(store.db.dsn)
    return SoleLeader()


class ReplicaRole:
    """This process among the replicas that share the store: its heartbeat (a shared database
    only: on one machine the process table says who lives) and, for `run` and `scheduler`, its
    part in the leader election -- the scheduler's periodic work runs on the leader only."""

    def __init__(self, store: Store, scheduler=None,
                 environ: Mapping[str, str] | None = None, *, elect: bool = True) -> None:
        from bot.leadership import Elector, ReplicaHeartbeat

        environ = os.environ if environ is None else environ
        self.store = store
        store.replica_stale_seconds = _seconds(environ, STALE_ENV, 15.0)
        self.shared = store.db.dialect != "sqlite"
        self.heartbeat = ReplicaHeartbeat(
            store, every=min(5.0, store.replica_stale_seconds / 3)) if self.shared else None
        self.elector = Elector(leadership_for(store),
                               poll=_seconds(environ, LEADER_POLL_ENV, 5.0),
                               on_gain=self._gained if self.shared else None) if elect else None
        if scheduler is not None and self.elector is not None:
            scheduler.is_leader = lambda: self.elector.is_leader

    def _gained(self) -> None:
        self.store.record_event(None, "deploybot", "leader.acquired", self.elector.replica)

    @property
    def replica(self) -> str:
        from bot.liveness import my_replica

        return my_replica()

    @property
    def is_leader(self) -> bool:
        return bool(self.elector and self.elector.is_leader)

    def about(self) -> dict:
        """For /healthz: who this is and whether it leads."""
        return {"replica": self.replica, "leader": self.is_leader}

    def start(self) -> "ReplicaRole":
        if self.heartbeat is not None:
            self.heartbeat.start()
        if self.elector is not None:
            self.elector.start()
        return self

    def stop(self) -> None:
        if self.elector is not None:
            self.elector.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
