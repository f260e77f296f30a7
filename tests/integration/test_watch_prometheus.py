"""PromQL rules of the watch window against a real Prometheus (Debian's `prometheus`).

Prometheus runs on a free 127.0.0.1 port with its own storage directory, scraping the test
service's /metrics every second through the container's 127.0.0.1 port, and is stopped by PID.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid

import httpx
import pytest
import yaml

from bot.errors import MetricsUnavailable
from backends.monitoring.prometheus import PrometheusSource
from tests.conftest import free_port
from tests.integration.test_docker_deploys import Deploybot
from fakes.people import SHARED_BOX

ERROR_RATE = ('(sum(rate(http_requests_total{code=~"5.."}[5s])) or vector(0))'
              ' / sum(rate(http_requests_total[5s]))')


class Prometheus:
    """One Prometheus process; `scrape(host_port)` points it at a target and reloads."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.write([])
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"prometheus did not start: {(workdir / 'prometheus.log').read_text()[-2000:]}",
                            pytrace=False)
            time.sleep(0.2)

    def write(self, targets: list[str]) -> None:
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "service", "static_configs": [{"targets": targets}]}]}))

    def scrape(self, target: str) -> None:
        self.write([target])
        assert httpx.post(f"{self.url}/-/reload", timeout=10).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait for the first successful scrape
            r = httpx.get(f"{self.url}/api/v1/query", params={"query": f'up{{instance="{target}"}}'},
                          timeout=5).json()["data"]["result"]
            if r and r[0]["value"][1] == "1":
                return
            time.sleep(0.3)
        pytest.fail(f"prometheus never scraped {target}", pytrace=False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory):
    """A running Prometheus on 127.0.0.1; fails (never skips) when it is not installed."""
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: apt-get install --no-install-recommends "
                    "prometheus (it is listed in .ci/apt-packages)", pytrace=False)
    server = Prometheus(tmp_path_factory.mktemp("prometheus"))
    yield server
    server.stop()


@pytest.fixture
def traffic():
    """`traffic(url)` keeps GETting `url` ten times a second until the test ends (real users)."""
    stop = threading.Event()
    threads = []

    def start(url: str) -> None:
        def loop():
            with httpx.Client(timeout=2) as client:
                while not stop.is_set():
                    try:
                        client.get(url)
                    except httpx.TransportError:
                        pass
                    stop.wait(0.1)
        t = threading.Thread(target=loop, daemon=True)
        t.start()
        threads.append(t)

    yield start
    stop.set()
    for t in threads:
        t.join(timeout=5)


def test_prometheus_error_rate_rule_rolls_back_a_version_failing_real_traffic(
        prometheus, traffic, demo_image, free_port, container_cleanup, tmp_path, http_get):
    demo_image("v1", "healthy")
    demo_image("v-500", "smoke-broken")
    port = free_port()
    name = f"dbt-prom-{uuid.uuid4().hex[:6]}"
    container_cleanup(f"{name}-staging")
    container_cleanup(f"{name}-staging--previous")
    base = f"http://127.0.0.1:{port}"
    bot = Deploybot(tmp_path, {
        "tracker": {"kind": "local"},
        **SHARED_BOX,
        "environments": {"staging": {}},
        "services": {name: {
            "image": demo_image.repository,
            "backend": {"kind": "docker", "ports": {"8080": f"127.0.0.1:{port}"},
                        "stop_timeout": 1, "pull": "never", "restart_policy": "no"},
            # no smoke test: only the users' traffic on /api/ping shows the 500s
            "health": {"url": f"{base}/health"},
            "metrics_url": f"{base}/metrics",
            "prometheus": {"url": prometheus.url, "queries": {"error_rate": ERROR_RATE}},
            "verify": {"timeout": 8, "interval": 0.2},
            "watch": {"window": 15, "interval": 0.5, "baseline_window": 1}}}})
    bot("deploy", bot.ready_ticket("v1"), f"{name}@v1")
    prometheus.scrape(f"127.0.0.1:{port}")
    traffic(f"{base}/api/ping")
    time.sleep(3)  # a few scrapes of healthy traffic: the baseline

    t = bot.ready_ticket("v-500")
    proc = bot("deploy", t, f"{name}@v-500", check=1)
    assert "rolled_back" in proc.stdout, proc.stdout
    assert http_get(f"{base}/version").text.strip() == "v1"
    record = bot.comments(t)
    assert "- [ ] Error rates nominal — FAILED: rule 'error rate (Prometheus)' tripped: " \
           "error rate 0.0% → " in record
    assert "(baseline + 5.0 pts allowed)" in record


def test_prometheus_source_answers_one_number_and_an_unreachable_one_is_inconclusive(prometheus):
    source = PrometheusSource(prometheus.url, timeout=5)
    assert source.query("vector(0.25)") == 0.25
    assert source.query("scalar(vector(3))") == 3.0
    assert source.query('up{job="no-such-job"}') is None
    with pytest.raises(MetricsUnavailable, match="refused"):
        source.query("sum(")
    with pytest.raises(MetricsUnavailable, match="cannot connect"):
        PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=2).query("vector(1)")
