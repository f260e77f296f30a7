"""A real HAProxy started as deploybot-proxy.service would start it, upstreams that answer their
name, and a client loop that counts failed requests while traffic is switched."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from backends.proxy.haproxy_container import haproxy_command
from fakes.waiting import wait_until


class Upstream:
    """An HTTP/1.1 server on 127.0.0.1 answering its `name`; /slow waits until `release` is set."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.release = threading.Event()
        self.in_slow = threading.Event()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = -1  # the answer in one write: no Nagle/delayed-ACK wait on keep-alive

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/slow":
                    upstream.in_slow.set()
                    upstream.release.wait(30)
                body = upstream.name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def process_request(self, request, client_address):
                upstream.connections.append(request)
                super().process_request(request, client_address)

            def handle_error(self, request, client_address):
                pass  # connections cut by close(), on purpose

        self.connections: list[socket.socket] = []
        self.httpd = Server((host, 0), Handler)
        port = self.httpd.server_address[1]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops as a stopped container does: no more connections, and the open keep-alive
        ones are cut too."""
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)
        for conn in self.connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None)
    if found is None:
        raise AssertionError("haproxy is not installed: apt-get install haproxy "
                             "(it is listed in .ci/apt-packages)")
    return found


class HostHaproxy:
    """`haproxy -W -S DIR/master.sock -f DIR/conf.d` (the systemd unit's command), stopped by PID."""

    def __init__(self, dir: Path) -> None:
        self.dir = dir
        self.log = dir / "haproxy.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [haproxy_binary(), *haproxy_command(str(self.dir))[1:]], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL)
        wait_until(lambda: self._answers() or self.process.poll() is not None, 15,
                   "haproxy's master and admin sockets")
        assert self.process.poll() is None, f"haproxy exited:\n{self.log.read_text()}"

    def _answers(self) -> bool:
        from backends.proxy.haproxy_socket import CliSocket

        try:
            CliSocket(str(self.dir / "master.sock"), 2).call("show proc")
            return "Pid:" in CliSocket(str(self.dir / "admin.sock"), 2).call("show info")
        except Exception:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the master stops its workers
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None


class ClientLoop:
    """GET / through `address` in a loop, on one keep-alive connection or one connection per
    request; every exception or non-200 answer counts as a failure."""

    def __init__(self, address: str, keep_alive: bool) -> None:
        self.host, _, port = address.rpartition(":")
        self.port = int(port)
        self.keep_alive = keep_alive
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ClientLoop":
        self._thread.start()
        wait_until(lambda: self.answers or self.failures, 10, "the first answer through the proxy")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                headers = {} if self.keep_alive else {"Connection": "close"}
                conn.request("GET", "/", headers=headers)
                resp = conn.getresponse()
                body = resp.read().decode()
                if resp.status != 200:
                    self.failures.append(f"{resp.status} {body[:80]}")
                else:
                    self.answers.append(body)
                if not self.keep_alive:
                    conn.close()
                    conn = None
            except Exception as exc:
                self.failures.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(0.002)
        if conn is not None:
            conn.close()

    def count(self) -> int:
        return len(self.answers) + len(self.failures)

    def wait_more(self, n: int) -> None:
        goal = self.count() + n
        wait_until(lambda: self.count() >= goal, 15, f"{n} more requests through the proxy",
                   every=0.01)
