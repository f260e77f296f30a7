"""Times one HaproxyProxy.route() (the runtime API round trip of a switch) and counts failed
requests under a constant load while traffic is switched back and forth, for HAProxy's default
keep-alive to the servers against `option http-server-close`, with keep-alive and one-shot clients.

A real haproxy (the host's, as deploybot-proxy.service starts it) in a temporary dir, two HTTP
upstreams on 127.0.0.1 (threads). No Docker needed.

    python benchmarks/haproxy_switch.py [--switches 40] [--rate 100]

Prints, per server-side mode and client kind: requests, failed, p99 latency; then route()'s
median and p99 over every switch made, and those of its one switching runtime API line.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from backends.proxy.haproxy import HaproxyProxy  # noqa: E402
from backends.proxy.haproxy_config import render_global  # noqa: E402
from bot.config import ProxySettings  # noqa: E402
from haproxy_harness import HostHaproxy, Upstream, free_port  # noqa: E402


class Load:
    """GET / at a constant `rate` (requests per second), one keep-alive connection or one
    connection per request; latency of every request, failures counted."""

    def __init__(self, listen: str, rate: float, keep_alive: bool) -> None:
        self.host, _, port = listen.rpartition(":")
        self.port = int(port)
        self.period = 1.0 / rate
        self.keep_alive = keep_alive
        self.latencies: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = None
        due = time.perf_counter()
        while not self._stop.is_set():
            due += self.period
            t = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/", headers={} if self.keep_alive else {"Connection": "close"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    self.failed += 1
                if not self.keep_alive:
                    conn.close()
                    conn = None
            except Exception:
                self.failed += 1
                if conn is not None:
                    conn.close()
                conn = None
            self.latencies.append(time.perf_counter() - t)
            time.sleep(max(0.0, due - time.perf_counter()))

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] if len(values) >= 2 else values[0]


def timed_switch_line(proxy: HaproxyProxy, times: list[float]) -> None:
    """Record the round trip of the one runtime API line that switches (ready + drain)."""
    call = proxy.admin.call

    def timed(line: str) -> str:
        t = time.perf_counter()
        try:
            return call(line)
        finally:
            if "state drain" in line:
                times.append(time.perf_counter() - t)

    proxy.admin.call = timed


def run(mode: str, switches: int, rate: float, route_times: list[float],
        line_times: list[float]) -> None:
    with tempfile.TemporaryDirectory(prefix="dbhb-") as tmp:
        listen = f"127.0.0.1:{free_port()}"
        proxy = HaproxyProxy(ProxySettings(listen=listen, port=8080, run="host", dir=tmp), "bench")
        try:
            proxy.ensure(lambda m: None)
        except Exception:
            pass  # "not running": the files are written, start it as the unit would
        if mode == "http-server-close":
            (Path(tmp) / "conf.d" / "00-global.cfg").write_text(
                render_global(tmp) + "    option http-server-close\n")
        timed_switch_line(proxy, line_times)
        haproxy = HostHaproxy(Path(tmp))
        haproxy.start()
        a, b = Upstream("A"), Upstream("B")
        try:
            proxy.route(a.address, lambda m: None)
            for keep_alive in (True, False):
                with Load(listen, rate, keep_alive) as load:
                    time.sleep(0.5)
                    for i in range(switches):
                        t = time.perf_counter()
                        proxy.route((b if i % 2 == 0 else a).address, lambda m: None)
                        route_times.append(time.perf_counter() - t)
                        time.sleep(0.1)
                    time.sleep(0.5)
                kind = "keep-alive client" if keep_alive else "one-shot client "
                print(f"  {mode:18} {kind}: {len(load.latencies):5d} requests, "
                      f"{load.failed} failed, p99 {p99(load.latencies) * 1000:6.2f} ms")
        finally:
            a.close()
            b.close()
            haproxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=40)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    print(f"{args.switches} switches per run, {args.rate:g} requests/s, 0.1 s between switches")
    route_times: list[float] = []
    line_times: list[float] = []
    for mode in ("keep-alive (default)", "http-server-close"):
        run(mode, args.switches, args.rate, route_times, line_times)
    print(f"route() (reads, sets the idle slot, switches, writes the file): median "
          f"{statistics.median(route_times) * 1000:.2f} ms, p99 {p99(route_times) * 1000:.2f} ms "
          f"over {len(route_times)} switches")
    print(f"the switch line alone (runtime API round trip): median "
          f"{statistics.median(line_times) * 1000:.2f} ms, p99 {p99(line_times) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
