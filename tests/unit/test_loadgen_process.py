"""benchmarks/loadgen.py's Load: requests really leave its process and come back as samples
(what a server answers, and what a closed port does not)."""

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.loadgen import Load, failure_kinds, summarize
from fakes.waiting import wait_until

pytestmark = pytest.mark.realtime


class Versioned:
    """A 127.0.0.1 server answering `version`, 503 on /broken; counts the requests."""

    def __init__(self, version: str) -> None:
        self.count = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.count += 1
                body = version.encode()
                self.send_response(503 if self.path == "/broken" else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    s = Versioned("v7")
    yield s
    s.close()


def test_every_request_sent_comes_back_with_its_answer(server):
    with Load(f"{server.base}/version", rps=100, timeout=5) as load:
        wait_until(lambda: server.count >= 10, 30, "10 requests at the server", every=0.05)
    assert len(load.samples) >= 10
    assert all(s.ok and s.body == "v7" and s.latency >= 0 for s in load.samples)
    assert summarize(load.samples, load.period).failed == 0


def test_non_2xx_answers_are_failures_with_their_status(server):
    with Load(f"{server.base}/broken", rps=100, timeout=5) as load:
        wait_until(lambda: server.count >= 3, 30, "3 requests at the server", every=0.05)
    assert failure_kinds(load.samples) == {"HTTP 503": len(load.samples)}


def test_a_closed_port_is_a_connect_error_not_a_hang():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with Load(f"http://127.0.0.1:{port}/version", rps=100, timeout=5) as load:
            time.sleep(0.2)  # no server to count at: let the load run a moment
    assert load.samples and failure_kinds(load.samples) == {"ConnectError": len(load.samples)}
