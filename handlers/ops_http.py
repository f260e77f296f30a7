"""`/healthz`, `/readyz` and `/metrics` over WSGI: next to the Slack endpoint in HTTP mode, on a
server of their own (--metrics-host/--metrics-port) in Socket Mode."""

from __future__ import annotations

import json
import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from bot.errors import ConfigError
from bot.health import Readiness, scheduler_check, store_check
from bot.metrics import registry_for

log = logging.getLogger("deploybot.ops")

HEALTH, READY, METRICS = "/healthz", "/readyz", "/metrics"
DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT = "127.0.0.1", 9464
METRICS_HOST_ENV, METRICS_PORT_ENV = "DEPLOYBOT_METRICS_HOST", "DEPLOYBOT_METRICS_PORT"

WSGIApp = Callable[[dict, Callable], Any]


def not_found(environ: dict, start_response: Callable) -> list[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
    return [b"not found\n"]


def _json(start_response: Callable, status: str, body: dict) -> list[bytes]:
    data = json.dumps(body, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data))), ("Cache-Control", "no-store")])
    return [data]


def ops_app(readiness: Readiness, metrics: WSGIApp | None = None,
            fallback: WSGIApp | None = None,
            about: Callable[[], dict] | None = None) -> WSGIApp:
    """The three endpoints (GET/HEAD only); every other path goes to `fallback` (404).
    `about`: more for /healthz (which replica this is, whether it leads)."""
    fallback = fallback or not_found

    def app(environ: dict, start_response: Callable) -> Any:
        path = environ.get("PATH_INFO", "")
        if path not in (HEALTH, READY, METRICS):
            return fallback(environ, start_response)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"),
                                                      ("Content-Type", "text/plain")])
            return [b"method not allowed\n"]
        if path == HEALTH:
            return _json(start_response, "200 OK", {"alive": True, **(about() if about else {})})
        if path == READY:
            ready, checks = readiness.report()
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable",
                         {"ready": ready, "checks": checks})
        if metrics is None:
            return not_found(environ, start_response)
        return metrics(environ, start_response)
    return app


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 128  # 50 Slack requests at once must not overflow the listen backlog


class ThreadingWSGIServer6(ThreadingWSGIServer):
    address_family = socket.AF_INET6


class QuietHandler(WSGIRequestHandler):
    # One send for status line, headers and body (wsgiref writes each unbuffered otherwise:
    # five system calls per answer, most of an ack's time on a busy machine).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's signature
        log.debug("http %s %s", self.address_string(), format % args)


class OpsServer:
    """The endpoints on a port of their own, in a thread; stop() closes the socket."""

    def __init__(self, app: WSGIApp, host: str = DEFAULT_METRICS_HOST,
                 port: int = DEFAULT_METRICS_PORT) -> None:
        self.server = make_server(host, port, app, server_class=ThreadingWSGIServer6
                                  if ":" in host else ThreadingWSGIServer,
                                  handler_class=QuietHandler)
        self.host = host
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="deploybot-metrics", daemon=True)

    @classmethod
    def listen(cls, app: WSGIApp, host: str, port: int) -> "OpsServer":
        """As the constructor, with a message a person can act on when the port is taken."""
        try:
            return cls(app, host, port)
        except OSError as exc:
            raise ConfigError(f"cannot serve /healthz and /metrics on {host}:{port}: "
                              f"{exc.strerror or exc}",
                              hint=f"choose another --metrics-port (or ${METRICS_PORT_ENV})") \
                from None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "OpsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(timeout=5)
        self.server.server_close()


def readiness_of(store, scheduler) -> Readiness:
    """What every deploybot service needs to be ready: the store answers, the scheduler runs."""
    readiness = Readiness()
    readiness.add("store", store_check(store))
    readiness.add("scheduler", scheduler_check(scheduler))
    return readiness


def metrics_app(store, readiness: Readiness, role=None) -> WSGIApp:
    return make_wsgi_app(registry_for(store, readiness,
                                      is_leader=(lambda: role.is_leader) if role else None))


def serve_scheduler(store, scheduler, host: str, port: int, role=None) -> OpsServer:
    """`deploybot scheduler --metrics-port`: the same endpoints; ready = store + scheduler."""
    readiness = readiness_of(store, scheduler)
    return OpsServer.listen(ops_app(readiness, metrics_app(store, readiness, role),
                                    about=role.about if role else None), host, port).start()
