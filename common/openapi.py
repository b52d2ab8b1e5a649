"""An OpenAPI 3 description of a service's routes, derived from the app's own URL map, so it
cannot drift from the code. Served at ``/openapi.json``; the bad-input tests read it."""

from __future__ import annotations

from typing import Any

from quart import Quart

from common.http import MAX_NUMBER

# Path parameters that are numbers (plain decimal integers, see common/http.parse_number);
# every other parameter is an opaque id.
NUMBERS = {
    "price",
    "amount",
    "quantity",
    "n",
    "n_items",
    "n_users",
    "item_price",
    "starting_stock",
    "starting_money",
}
PREFIXES = {"order": "/orders", "stock": "/stock", "payment": "/payment"}
_HIDDEN = {"/health", "/ready", "/metrics", "/openapi.json", "/static/<path:filename>"}


def describe(app: Quart, service: str) -> dict[str, Any]:
    """The OpenAPI document of ``app``'s routes, as the gateway exposes them."""
    paths: dict[str, Any] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule in _HIDDEN:
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(path, {})[method.lower()] = {
                "operationId": f"{service}.{rule.endpoint}",
                "parameters": [_parameter(name) for name in rule.arguments],
                "responses": {
                    "200": {"description": "done", "content": {"application/json": {}}},
                    "400": {"description": "bad input, unknown id or refused; nothing changed"},
                },
            }
    return {
        "openapi": "3.0.3",
        "info": {"title": f"{service} service", "version": "1"},
        "servers": [{"url": PREFIXES.get(service, "/")}],
        "paths": paths,
    }


def _parameter(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = (
        {"type": "integer", "minimum": 0, "maximum": MAX_NUMBER}
        if name in NUMBERS
        else {"type": "string", "minLength": 1}
    )
    return {"name": name, "in": "path", "required": True, "schema": schema}
