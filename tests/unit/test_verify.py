"""Detailed health bodies come in several shapes; any component not ok fails."""

from bot.verify import detailed_url, unhealthy_components


def test_components_map():
    assert unhealthy_components({"status": "ok", "components": {"db": "ok", "cache": "down"}}) == ["cache=down"]


def test_spring_style_checks():
    body = {"status": "UP", "checks": {"db": {"status": "UP"}, "disk": {"status": "DOWN"}}}
    assert unhealthy_components(body) == ["disk=DOWN"]


def test_top_level_status_counts():
    assert unhealthy_components({"status": "degraded"}) == ["status=degraded"]


def test_all_ok():
    assert unhealthy_components({"status": "pass", "details": {"a": {"status": "pass"}}}) == []


def test_not_an_object():
    assert unhealthy_components(["ok"]) == ["(body is not a JSON object)"]


def test_detailed_url_replaces_the_path():
    assert detailed_url("http://127.0.0.1:8/health?x=1", "/health/detailed") == "http://127.0.0.1:8/health/detailed"
