"""The one place that turns the configuration into a tracker, backends and a pipeline."""

from __future__ import annotations

import os
from typing import Mapping

from bot.childenv import without_secrets
from bot.config import Config
from bot.errors import ConfigError
from bot.pipeline import Pipeline
from bot.ports import Approver, DeployBackend, Reporter, Tracker
from bot.redact import (Redactor, RedactingReporter, RedactingTracker, install_log_filter,
                        redactor_for, secret_env_names)
from bot.store import Store
from handlers import database_url
from handlers.database_url import DB_ENV


def open_store(environ: Mapping[str, str] | None = None, clock=None) -> Store:
    """The store DEPLOYBOT_DB names (handlers/database_url.py: a path, sqlite:..., postgresql://)."""
    environ = os.environ if environ is None else environ
    location = database_url.parse(environ.get(DB_ENV))
    target = (location.where if location.engine == database_url.SQLITE
              else database_url.open_database(location))
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
    # DEPLOYBOT_DB too: a PostgreSQL DSN carries the store's password.
    tools_environ = without_secrets(os.environ if environ is None else environ,
                                    [*secret_env_names(config, declared=False), DB_ENV])

    def backend_for(service: str, environment: str) -> DeployBackend:
        key = (service, environment)
        if key not in cache:
            cache[key] = build_backend(service, environment, config.service(service, environment),
                                       environ=tools_environ)
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
    from backends.monitoring.probe import HttpxProbe

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
                        approver=approver, probe=probe or HttpxProbe.for_config(config, environ),
                        environ=environ, image_builder=build_image_builder(environ), clock=clock,
                        durable_posts=durable_posts)
    pipeline.metrics_for = metrics_factory(config)
    pipeline.redact = redact
    return pipeline


def metrics_factory(config: Config):
    """service, environment -> the service's Prometheus (None when it has none configured)."""
    from backends.monitoring.prometheus import PrometheusSource

    cache: dict[tuple[str, str], PrometheusSource] = {}

    def metrics_for(service: str, environment: str):
        settings = config.service(service, environment).prometheus
        if settings is None:
            return None
        if (service, environment) not in cache:
            cache[(service, environment)] = PrometheusSource(str(settings.url), settings.timeout)
        return cache[(service, environment)]

    return metrics_for
