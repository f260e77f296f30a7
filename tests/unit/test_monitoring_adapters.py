"""The watch window's adapters: Prometheus's query API (httpx MockTransport) and docker stats."""

from __future__ import annotations

import httpx
import pytest

from backends.deploy.docker import usage_from_stats
from backends.monitoring.prometheus import PrometheusSource
from bot.errors import MetricsUnavailable


def source(handler) -> PrometheusSource:
    return PrometheusSource("http://127.0.0.1:9090/", client=httpx.Client(
        transport=httpx.MockTransport(handler)))


def answer(result_type, result, status=200):
    return lambda request: httpx.Response(status, json={
        "status": "success", "data": {"resultType": result_type, "result": result}})


def test_a_one_series_vector_is_its_value_and_an_empty_one_is_no_data():
    seen = []

    def handler(request):
        seen.append(request.url)
        return answer("vector", [{"metric": {}, "value": [1700000000, "0.42"]}])(request)

    assert source(handler).query("sum(rate(x[1m]))") == 0.42
    assert seen[0].path == "/api/v1/query" and seen[0].params["query"] == "sum(rate(x[1m]))"
    assert source(answer("vector", [])).query("x") is None
    assert source(answer("vector", [{"value": [1, "NaN"]}])).query("x") is None
    assert source(answer("scalar", [1, "3"])).query("x") == 3.0


def test_several_series_an_error_or_no_connection_are_inconclusive():
    with pytest.raises(MetricsUnavailable, match="2 series"):
        source(answer("vector", [{"value": [1, "1"]}, {"value": [1, "2"]}])).query("x")
    with pytest.raises(MetricsUnavailable, match="parse error"):
        source(lambda r: httpx.Response(400, json={"status": "error", "error": "parse error"})
               ).query("sum(")
    with pytest.raises(MetricsUnavailable, match="not JSON"):
        source(lambda r: httpx.Response(502, text="<html>bad gateway</html>")).query("x")

    def refuse(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(MetricsUnavailable, match="cannot connect"):
        source(refuse).query("x")


def test_docker_stats_give_cpu_percent_of_one_core_and_memory_without_page_cache():
    stats = {"cpu_stats": {"cpu_usage": {"total_usage": 3_000}, "system_cpu_usage": 20_000,
                           "online_cpus": 4},
             "precpu_stats": {"cpu_usage": {"total_usage": 1_000}, "system_cpu_usage": 10_000},
             "memory_stats": {"usage": 50 * 2**20, "stats": {"inactive_file": 10 * 2**20}}}
    usage = usage_from_stats(stats)
    assert usage.cpu_percent == pytest.approx(80.0)
    assert usage.memory_bytes == 40 * 2**20
    assert usage_from_stats({}).cpu_percent == 0.0
