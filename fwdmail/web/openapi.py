"""The OpenAPI 3.1 document of the API, served at `/v1/openapi.json`; the tests check every reply
against it. Untrusted input: none (a fixed document)."""

from __future__ import annotations

import copy
from typing import Any

_TIME = {"type": "string", "format": "date-time"}
_NULL_TIME = {"type": ["string", "null"], "format": "date-time"}


def _object(props: dict[str, Any], extra: bool = False) -> dict[str, Any]:
    return {"type": "object", "required": sorted(props), "properties": props, "additionalProperties": extra}


_SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string"}, "message": {"type": "string"}}),
    "Health": {"type": "object", "required": ["status"], "additionalProperties": False,
               "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]},
                              "reason": {"type": "string"}}},
    "Account": _object({"email": {"type": "string"},
                        "domains": {"type": "array", "items": {"type": "string"}}, "created_at": _TIME}),
    "Domain": _object({
        "name": {"type": "string"}, "account": {"type": "string"}, "dkim_selector": {"type": "string"},
        "retention_days": {"type": "integer", "minimum": 0, "maximum": 30}, "verified_at": _NULL_TIME,
        "auth_policy": {"type": "string", "enum": ["off", "report-only", "enforce"]},
        "friendly_from": {"type": "boolean"}, "require_tls_inbound": {"type": "boolean"},
        "created_at": _TIME,
    }),
    "DnsRecord": _object({"type": {"type": "string"}, "name": {"type": "string"},
                          "value": {"type": "string"}}),
    "Alias": _object({
        "address": {"type": "string"}, "kind": {"type": "string", "enum": ["exact", "catch-all", "regex"]},
        "destinations": {"type": "array", "items": {"type": "string"}},
        "state": {"type": "string", "enum": ["enabled", "quiet", "tempfail", "reject"]},
        "has_password": {"type": "boolean"}, "account": {"type": "string"}, "created_at": _TIME,
    }),
    "DomainRemoved": {"type": "object", "required": ["removed"],
                      "properties": {"removed": {"type": "string"}},
                      "additionalProperties": {"type": "integer"}},
    "AliasRemoved": _object({"removed": {"type": "string"}}),
    "NewDomain": _object({"name": {"type": "string"}}),
    "NewAlias": _object({"address": {"type": "string"},
                         "destinations": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                                          "maxItems": 10}}),
}
for _name, _items in (("DomainPage", "domains"), ("AliasPage", "aliases")):
    _SCHEMAS[_name] = _object({
        _items: {"type": "array", "items": {"$ref": f"#/components/schemas/{_name.removesuffix('Page')}"}},
        "next": {"type": ["string", "null"], "description": "the cursor of the next page (give it as "
                 "`after`), null on the last page"},
    })
_SCHEMAS["DomainAdded"] = copy.deepcopy(_SCHEMAS["Domain"])
_SCHEMAS["DomainAdded"]["properties"]["dns"] = {"type": "array",
                                                "items": {"$ref": "#/components/schemas/DnsRecord"}}
_SCHEMAS["DomainAdded"]["required"] = sorted([*_SCHEMAS["Domain"]["required"], "dns"])


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "bad input", 401: "no valid token", 404: "not found (or another account's)",
            409: "exists already", 413: "body too large", 503: "the store is unavailable"}
    return {str(s): _json(_ref("Error"), text[s]) for s in statuses}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


_DOMAIN = {"name": "domain", "in": "path", "required": True, "schema": {"type": "string"}}
_ALIAS = {"name": "alias", "in": "path", "required": True, "schema": {"type": "string"},
          "description": "the alias without its domain: a local part or *"}
_AUTHED = (401, 503)
_LIMIT = {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100},
          "description": "items per page (default 50)"}
_AFTER = {"name": "after", "in": "query", "schema": {"type": "string"},
          "description": "keyset paging: the `next` cursor of the page before, or empty for the first page; "
                         "the reply is then an object with the page and `next`, stable while items are added"}


def _listed(name: str, description: str) -> dict[str, Any]:
    """A list reply: the JSON array (without `after`) or one keyset page (with it)."""
    return _json({"oneOf": [{"type": "array", "items": _ref(name)}, _ref(f"{name}Page")]}, description)



def _op(summary: str, responses: dict[str, Any], *, params: list[Any] | None = None,
        body: str | None = None, secured: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = _body(body)
    if not secured:
        op["security"] = []
    return op


_PATHS: dict[str, Any] = {
    "/healthz": {"get": _op("Whether the daemon can serve (the store reachable)", {
        "200": _json(_ref("Health"), "serving"), "503": _json(_ref("Health"), "not serving, with the reason"),
    }, secured=False)},
    "/v1/openapi.json": {"get": _op("This document", {"200": {"description": "OpenAPI 3.1 document",
                                                               "content": {"application/json": {}}}},
                                    secured=False)},
    "/v1/account": {"get": _op("The token's account", {"200": _json(_ref("Account"), "the account"),
                                                        **_errors(*_AUTHED)})},
    "/v1/domains": {
        "get": _op("The account's domains: all of them, or with `after` a page at a time by name", {
            "200": _listed("Domain", "domains"), **_errors(400, *_AUTHED)}, params=[_LIMIT, _AFTER]),
        "post": _op("Add a domain (with a new DKIM key); returns the DNS records to publish", {
            "201": _json(_ref("DomainAdded"), "added"), **_errors(400, 409, 413, *_AUTHED)},
            body="NewDomain"),
    },
    "/v1/domains/{domain}": {
        "get": _op("One domain", {"200": _json(_ref("Domain"), "the domain"), **_errors(400, 404, *_AUTHED)},
                   params=[_DOMAIN]),
        "delete": _op("Remove a domain with its aliases, mail and logs", {
            "200": _json(_ref("DomainRemoved"), "removed, with counts"), **_errors(400, 404, *_AUTHED)},
            params=[_DOMAIN]),
    },
    "/v1/domains/{domain}/aliases": {
        "get": _op("The domain's aliases, a page at a time (a Link header names the next page): by "
                   "`page` number, or by `after` cursor (keyset)", {
            "200": _listed("Alias", "one page"), **_errors(400, 404, *_AUTHED)},
            params=[_DOMAIN, {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    _LIMIT, _AFTER]),
        "post": _op("Add an alias", {"201": _json(_ref("Alias"), "added"),
                                     **_errors(400, 404, 409, 413, *_AUTHED)},
                    params=[_DOMAIN], body="NewAlias"),
    },
    "/v1/domains/{domain}/aliases/{alias}": {
        "get": _op("One alias", {"200": _json(_ref("Alias"), "the alias"), **_errors(400, 404, *_AUTHED)},
                   params=[_DOMAIN, _ALIAS]),
        "delete": _op("Remove an alias", {"200": _json(_ref("AliasRemoved"), "removed"),
                                          **_errors(400, 404, *_AUTHED)},
                      params=[_DOMAIN, _ALIAS]),
    },
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "fwdmail API", "version": "1"},
        "components": {
            "schemas": copy.deepcopy(_SCHEMAS),
            "securitySchemes": {"basic": {"type": "http", "scheme": "basic",
                                          "description": "the API token as user name, any password"},
                                "bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"basic": []}, {"bearer": []}],
        "paths": copy.deepcopy(_PATHS),
    }
