"""A loopback HTTP forwarder that lets the real server commit a write and answers the client late:
what a tracker behind a slow proxy does when deploybot's timeout fires first."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class LateProxy:
    """Forwards every request to `upstream`; the next `times` requests with method `late_method`
    are answered `delay` seconds after the upstream answered (the write is already made)."""

    def __init__(self, upstream: str, *, late_method: str = "PUT", delay: float = 2.0) -> None:
        self.upstream = upstream
        self.late_method = late_method
        self.delay = delay
        self.times = 0
        self.forwarded: list[tuple[str, str, int]] = []  # method, path, upstream status
        self._lock = threading.Lock()
        self._client = httpx.Client(base_url=upstream, timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                proxy._forward(self)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> "LateProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
        self._client.close()

    def late(self, times: int = 1) -> None:
        with self._lock:
            self.times = times

    def _forward(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else None
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        resp = self._client.request(h.command, h.path, content=body, headers=headers)
        with self._lock:
            self.forwarded.append((h.command, h.path, resp.status_code))
            late = h.command == self.late_method and self.times > 0
            if late:
                self.times -= 1
        if late:
            time.sleep(self.delay)  # committed upstream; the client has given up by now
        try:
            h.send_response(resp.status_code)
            for k, v in resp.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    h.send_header(k, v)
            h.send_header("Content-Length", str(len(resp.content)))
            h.end_headers()
            h.wfile.write(resp.content)
        except (BrokenPipeError, ConnectionResetError):
            pass
