"""Liveness, readiness, metrics, and the one error shape for everything that goes wrong."""

from __future__ import annotations

import re

from service.registry import migrate


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{"):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rindex("}")]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_healthz_and_readyz_when_all_is_well(client, admin_headers, make_key):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/readyz", headers=admin_headers).json() == {"status": "ready", "checks": {"database": "ok"}}
    for other in ({"Authorization": f"Bearer {make_key('optimize', 'train')}"}, {"Authorization": "Bearer l2o_x"},
                  {"Authorization": "Basic eDp5"}):
        assert client.get("/readyz", headers=other).json() == {"status": "ready"}, other


def test_readyz_fails_while_the_database_is_behind_head(client, database_url, admin_headers):
    migrate.downgrade(database_url, "-1")
    try:
        response = client.get("/readyz", headers=admin_headers)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "service_unavailable" and "l2o db upgrade" in error["message"]
        assert "behind" in error["detail"]["checks"]["database"]
        # Anyone learns that it is not ready and which check failed, never what the check found.
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["detail"] == {"failed": ["database"]}
        assert "upgrade" not in response.text and "alembic" not in response.text.lower()
        assert client.get("/healthz").status_code == 200
    finally:
        migrate.upgrade(database_url)
    assert client.get("/readyz").status_code == 200


def test_readyz_tells_only_an_admin_key_what_each_failing_check_found(app, client, admin_headers):
    def broken():
        raise RuntimeError("cache at 10.0.0.7:6379 unreachable (redis-py)")

    app.state.readiness["cache"] = broken
    error = client.get("/readyz", headers=admin_headers).json()["error"]
    assert error["detail"]["checks"] == {"database": "ok",
                                         "cache": "RuntimeError: cache at 10.0.0.7:6379 unreachable (redis-py)"}
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 503 and anonymous.json()["error"]["detail"] == {"failed": ["cache"]}
    assert "10.0.0.7" not in anonymous.text and "redis" not in anonymous.text


def test_metrics_count_requests_latencies_and_errors_by_route(client, admin_headers):
    route = "/v1/optimizers/{name}"
    before = client.get("/metrics").text
    client.get("/v1/optimizers/absent", headers=admin_headers)
    client.get("/v1/optimizers/absent", headers=admin_headers)
    client.get("/v1/optimizers")
    client.get("/no/such/path")
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def delta(name, **labels):
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert delta("l2o_http_requests_total", method="GET", route=route, status="404") == 2
    assert delta("l2o_http_errors_total", method="GET", route=route, code="not_found") == 2
    assert delta("l2o_http_errors_total", method="GET", route="/v1/optimizers", code="unauthorized") == 1
    assert delta("l2o_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert delta("l2o_http_request_duration_seconds_count", method="GET", route=route) == 2
    assert "/no/such/path" not in text


def test_every_error_has_the_same_shape(client, admin_headers):
    for response in (client.get("/no/such/path"),
                     client.post("/healthz"),
                     client.get("/v1/optimizers"),
                     client.get("/v1/optimizers/x/versions/zero", headers=admin_headers),
                     client.put("/v1/optimizers/x/aliases/prod", content=b"{", headers=admin_headers)):
        body = response.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert client.post("/healthz").json()["error"]["code"] == "method_not_allowed"


def test_openapi_documents_the_registry(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/optimizers/{name}/versions" in paths and "/v1/keys" in paths
    upload = paths["/v1/optimizers/{name}/versions"]["post"]
    assert "application/octet-stream" in upload["requestBody"]["content"]


def test_start_up_objects_are_frozen_out_of_the_collector_while_serving(app):
    import gc

    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        assert gc.get_freeze_count() > 0   # full collections skip what start-up made
        assert client.get("/healthz").status_code == 200
    assert gc.get_freeze_count() == 0   # and after shutdown, this process can collect them again
