"""A small JSON Schema checker for the subset the API's OpenAPI 3.1 document uses (jsonschema is not a
dependency): $ref, type (one or a list), enum, properties/required/additionalProperties, items,
minItems/maxItems, minimum/maximum, format date-time."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def problems(value: Any, schema: dict[str, Any], doc: dict[str, Any], where: str = "$") -> list[str]:
    """What in `value` breaks `schema` (empty: it conforms)."""
    if "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return problems(value, node, doc, where)
    if "oneOf" in schema:
        fits = sum(not problems(value, option, doc, where) for option in schema["oneOf"])
        return [] if fits == 1 else [f"{where}: fits {fits} of the oneOf schemas, not exactly one"]
    out: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_is(value, n) for n in names):
            return [f"{where}: {value!r} is not {names}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if schema.get("format") == "date-time" and isinstance(value, str):
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            out.append(f"{where}: {value!r} is not a date-time")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: {value} > {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                out += problems(item, props[key], doc, f"{where}.{key}")
            elif extra is False:
                out.append(f"{where}: unexpected {key!r}")
            elif isinstance(extra, dict):
                out += problems(item, extra, doc, f"{where}.{key}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(f"{where}: more than {schema['maxItems']} items")
        for i, item in enumerate(value):
            out += problems(item, schema.get("items", {}), doc, f"{where}[{i}]")
    return out


def operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    """The document's operation for `method` on the concrete `path` (templates matched segment-wise)."""
    for template, item in doc["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return item[method.lower()]
    return None


def response_problems(doc: dict[str, Any], method: str, path: str, status: int, body: Any) -> list[str]:
    """Whether a reply is one the document describes: its status listed, its JSON matching the schema."""
    op = operation(doc, method, path.split("?", 1)[0])
    if op is None:
        return [f"{method} {path}: not in the document"]
    described = op["responses"].get(str(status))
    if described is None:
        return [f"{method} {path}: status {status} not documented"]
    schema = described.get("content", {}).get("application/json", {}).get("schema")
    return [] if schema is None else problems(body, schema, doc)
