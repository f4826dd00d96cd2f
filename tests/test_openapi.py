"""The OpenAPI document describes exactly the routes the server has."""

from __future__ import annotations

from tests.conftest import Server


async def test_openapi_matches_the_routes(server: Server) -> None:
    status, doc = await server.api("GET", "/api/v1/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.1")
    described = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    routed = set()
    for route in server.app.api.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        routed.add((route.method, path))
    assert described == routed
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["summary"] and op["responses"], path
    body = doc["paths"]["/api/v1/sessions"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["required"]) == {"charge_point_id", "connector_id"}
