"""The OpenAPI 3.1 document of the API, served at `/v1/openapi.json`; the tests check every reply
against it. Untrusted input: none (a fixed document)."""

from __future__ import annotations

import copy
from typing import Any

_TIME = {"type": "string", "format": "date-time"}
_NULL_TIME = {"type": ["string", "null"], "format": "date-time"}
_STATUSES = ["queued", "deferred", "delivered", "bounced", "partial", "held"]


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
        "aliases_from": {"type": "string", "enum": ["store", "dns", "both"]},
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
    "AccountDeleted": {"type": "object", "required": ["deleted"],
                       "properties": {"deleted": {"type": "string"}},
                       "additionalProperties": {"type": "integer"}},
    "DeleteAccount": _object({"confirm": {"type": "string", "description": "the account's email address"}}),
    "DomainSettings": {"type": "object", "additionalProperties": False, "minProperties": 1,
                       "properties": {"retention_days": {"type": "integer", "minimum": 0, "maximum": 30},
                                      "auth_policy": {"type": "string",
                                                      "enum": ["off", "report-only", "enforce"]},
                                      "friendly_from": {"type": "boolean"},
                                      "require_tls_inbound": {"type": "boolean"},
                                      "aliases_from": {"type": "string",
                                                       "enum": ["store", "dns", "both"]}}},
    "Verification": _object({
        "domain": {"type": "string"}, "verified_at": _NULL_TIME,
        "records": {"type": "array", "items": _object({
            "type": {"type": "string"}, "name": {"type": "string"}, "value": {"type": "string"},
            "ok": {"type": "boolean"}, "found": {"type": "string"}})},
    }),
    "AliasChanges": {"type": "object", "additionalProperties": False, "minProperties": 1,
                     "properties": {"destinations": {"type": "array", "items": {"type": "string"},
                                                     "minItems": 1, "maxItems": 10},
                                    "enabled": {"type": "boolean"},
                                    "mode": {"type": "string", "enum": ["quiet", "tempfail", "reject"],
                                             "description": "with enabled: false (default reject)"}}},
    "NewPassword": _object({"address": {"type": "string"}, "password": {"type": "string"}}),
    "Recipient": _object({
        "address": {"type": "string"}, "status": {"type": "string"}, "attempts": {"type": "integer"},
        "code": {"type": ["integer", "null"]}, "enhanced_code": {"type": ["string", "null"]},
        "text": {"type": ["string", "null"]}, "updated_at": _TIME,
    }),
    "Email": _object({
        "id": {"type": "string"},
        "status": {"type": "string", "enum": _STATUSES},
        "domain": {"type": "string"}, "mail_from": {"type": "string"}, "subject": {"type": "string"},
        "date": _NULL_TIME, "size": {"type": "integer"}, "created_at": _TIME, "send_at": _NULL_TIME,
        "next_attempt_at": _NULL_TIME, "claimed": {"type": "boolean"}, "attempts": {"type": "integer"},
        "crash_count": {"type": "integer"}, "final_at": _NULL_TIME, "redacted": {"type": "boolean"},
        "redacted_at": _NULL_TIME, "delay_notified": {"type": "boolean"}, "dsn_sent": {"type": "boolean"},
        "recipients": {"type": "array", "items": {"$ref": "#/components/schemas/Recipient"}},
    }),
    "EmailDeleted": _object({"deleted": {"type": "string"}}),
    "SmtpError": _object({
        "time": _TIME, "direction": {"type": "string", "enum": ["inbound", "outbound"]},
        "domain": {"type": "string"}, "alias": {"type": "string"}, "code": {"type": "integer"},
        "enhanced_code": {"type": "string"}, "text": {"type": "string"},
    }),
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
_SCHEMAS["EmailShown"] = copy.deepcopy(_SCHEMAS["Email"])
_SCHEMAS["EmailShown"]["properties"].update({
    "headers": {"type": "array", "items": {"type": "array", "items": {"type": "string"}, "minItems": 2,
                                           "maxItems": 2}},
    "text": {"type": ["string", "null"]}, "text_type": {"type": ["string", "null"]},
    "attachments": {"type": "array", "items": _object({"filename": {"type": ["string", "null"]},
                                                       "content_type": {"type": "string"}})},
})
_SCHEMAS["EmailShown"]["required"] = sorted(_SCHEMAS["EmailShown"]["properties"])


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {400: "bad input", 401: "no valid token", 404: "not found (or another account's)",
            409: "exists already", 413: "body too large", 429: "busy: retry after Retry-After seconds",
            503: "unavailable (the store, DNS or a busy pool): try again later"}
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


_EMAIL_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
             "description": "the queue id"}
_CURSOR = {"name": "cursor", "in": "query", "schema": {"type": "string"},
           "description": "from the previous page's Link header (rel=next)"}
_SINCE = {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"},
          "description": "created at or after (UTC unless an offset is given)"}
_UNTIL = {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"},
          "description": "created before"}
_FILTER_DOMAIN = {"name": "domain", "in": "query", "schema": {"type": "string"},
                  "description": "one of the account's domains"}
_FILTER_ALIAS = {"name": "alias", "in": "query", "schema": {"type": "string"},
                 "description": "one of the account's aliases, as its full address (user@domain)"}


def _list(item: str, description: str) -> dict[str, Any]:
    return _json({"type": "array", "items": _ref(item)}, description)


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
    "/healthz": {"get": _op("Whether the daemon can serve: the store reachable, every listener up", {
        "200": _json(_ref("Health"), "serving"), "503": _json(_ref("Health"), "not serving, with the reason"),
    }, secured=False)},
    "/v1/openapi.json": {"get": _op("This document", {"200": {"description": "OpenAPI 3.1 document",
                                                               "content": {"application/json": {}}}},
                                    secured=False)},
    "/v1/account": {
        "get": _op("The token's account", {"200": _json(_ref("Account"), "the account"),
                                           **_errors(*_AUTHED)}),
        "delete": _op("Delete the account with all its domains, aliases, keys, passwords, mail and logs "
                      "(as `fwdmail account delete`); the body must confirm the account's email", {
                          "200": _json(_ref("AccountDeleted"), "deleted, with counts"),
                          **_errors(400, 413, *_AUTHED)}, body="DeleteAccount"),
    },
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
        "patch": _op("Change settings (as `fwdmail domain set`), e.g. retention_days or aliases_from", {
            "200": _json(_ref("Domain"), "the domain as it is now"), **_errors(400, 404, 413, *_AUTHED)},
            params=[_DOMAIN], body="DomainSettings"),
    },
    "/v1/domains/{domain}/dns": {"get": _op("The DNS records to publish (as `fwdmail domain dns`)", {
        "200": _list("DnsRecord", "records"), **_errors(400, 404, *_AUTHED)}, params=[_DOMAIN])},
    "/v1/domains/{domain}/verify": {"post": _op(
        "Look the records up through the daemon's resolver; the domain is verified when MX and token match",
        {"200": _json(_ref("Verification"), "each record's result"), **_errors(400, 404, 429, *_AUTHED)},
        params=[_DOMAIN])},
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
        "patch": _op("Replace destinations; enable, or disable with a mode (as `fwdmail alias disable`)", {
            "200": _json(_ref("Alias"), "the alias as it is now"), **_errors(400, 404, 413, *_AUTHED)},
            params=[_DOMAIN, _ALIAS], body="AliasChanges"),
    },
    "/v1/domains/{domain}/aliases/{alias}/password": {"post": _op(
        "Generate a new SMTP password (shown once; only its hash is kept)", {
            "200": _json(_ref("NewPassword"), "the new password"), **_errors(400, 404, *_AUTHED)},
        params=[_DOMAIN, _ALIAS])},
    "/v1/emails": {"get": _op("The account's outbound mail, newest first, a page at a time", {
        "200": _list("Email", "one page (a Link header names the next)"), **_errors(400, 404, *_AUTHED)},
        params=[{"name": "status", "in": "query", "schema": {"type": "string", "enum": _STATUSES}},
                _FILTER_DOMAIN, _FILTER_ALIAS, _SINCE,
                _UNTIL, _LIMIT, _CURSOR])},
    "/v1/emails/{id}": {
        "get": _op("One message: statuses per recipient, headers, text and attachments listed", {
            "200": _json(_ref("EmailShown"), "the message"), **_errors(404, *_AUTHED)}, params=[_EMAIL_ID]),
        "delete": _op("Delete a message and its record (not sent if it was not yet)", {
            "200": _json(_ref("EmailDeleted"), "deleted"), **_errors(404, *_AUTHED)}, params=[_EMAIL_ID]),
    },
    "/v1/emails/{id}/retry": {"post": _op("Try a queued, deferred or held message again now", {
        "200": _json(_ref("Email"), "due now"), **_errors(400, 404, *_AUTHED)}, params=[_EMAIL_ID])},
    "/v1/logs": {"get": _op("SMTP errors (4xx/5xx) of the account's domains, newest first", {
        "200": _list("SmtpError", "one page (a Link header names the next)"), **_errors(400, 404, *_AUTHED)},
        params=[_FILTER_DOMAIN, _FILTER_ALIAS, {"name": "direction", "in": "query",
                                 "schema": {"type": "string", "enum": ["inbound", "outbound"]}},
                _SINCE, _UNTIL, _LIMIT, _CURSOR])},
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
