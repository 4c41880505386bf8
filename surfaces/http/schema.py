"""The route table's vocabulary: parameters, body fields, routes, and the OpenAPI document.

A route is described once (:class:`Route`). The app registers its view from that
description, validates query strings, headers and bodies with it, and
:func:`openapi` renders the same description, so documentation and behaviour cannot
drift apart. Validation errors are :class:`~palyra.errors.InvalidInput` naming the
offending field in ``details.field``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from palyra.access.tokens import ADMIN_TOKEN_FILE
from palyra.errors import InvalidInput
from palyra.ids import is_ulid

JSON = "application/json"
SSE = "text/event-stream"

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
_PATH_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def _bad(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", details={"field": field})


def _check_ulid(field: str, value: str) -> str:
    # Checked here so the 400 names the field before the runtime sees the value (the
    # runtime's own check may not say which field it was).
    if not is_ulid(value):
        raise _bad(field, "must be a canonical ULID")
    return value


@dataclasses.dataclass(frozen=True)
class Field:
    """One member of a JSON request body. Optional fields accept ``null`` as absent."""

    name: str
    type: str
    required: bool = False
    description: str = ""
    enum: tuple[Any, ...] | None = None
    items: str | None = None  # arrays: a JSON type, or a component schema name
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    ulid: bool = False  # a string that must be a canonical ULID

    def check(self, value: Any) -> Any:
        allowed = tuple(t for name in self.type.split("|") for t in _JSON_TYPES[name])
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            raise _bad(self.name, f"must be of type {self.type}")
        if self.enum is not None and value not in self.enum:
            raise _bad(self.name, f"must be one of {', '.join(map(str, self.enum))}")
        if self.max_length is not None and len(value) > self.max_length:
            raise _bad(self.name, f"must be at most {self.max_length} long")
        if self.minimum is not None and value < self.minimum:
            raise _bad(self.name, f"must be >= {self.minimum}")
        if self.maximum is not None and value > self.maximum:
            raise _bad(self.name, f"must be <= {self.maximum}")
        return _check_ulid(self.name, value) if self.ulid else value

    def schema(self) -> dict[str, Any]:
        kinds = self.type.split("|")
        base: dict[str, Any] = {"type": kinds[0] if len(kinds) == 1 else kinds}
        if self.enum is not None:
            base["enum"] = list(self.enum)
        if self.items is not None:
            base["items"] = {"type": self.items} if self.items in _JSON_TYPES else _ref(self.items)
        if self.max_length is not None:
            base["maxLength" if self.type == "string" else "maxItems"] = self.max_length
        if self.minimum is not None:
            base["minimum"] = self.minimum
        if self.maximum is not None:
            base["maximum"] = self.maximum
        if self.ulid:
            base["format"] = "ulid"
        out = base if self.required else {"anyOf": [base, {"type": "null"}]}
        if self.description:
            out["description"] = self.description
        return out


@dataclasses.dataclass(frozen=True)
class Body:
    """A JSON object request body (``name`` is its component schema name)."""

    name: str
    fields: tuple[Field, ...]
    description: str = ""

    def parse(self, raw: bytes) -> dict[str, Any]:
        if not raw.strip():
            data: Any = {}
        else:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"request body is not valid JSON: {exc}",
                                   details={"field": "body"}) from None
        if not isinstance(data, dict):
            raise InvalidInput("request body must be a JSON object", details={"field": "body"})
        known = {f.name: f for f in self.fields}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise _bad(unknown[0], "unknown field")
        out: dict[str, Any] = {}
        for field in self.fields:
            value = data.get(field.name)
            if value is None:
                if field.required:
                    raise _bad(field.name, "is required")
                continue
            out[field.name] = field.check(value)
        return out

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "object",
            "additionalProperties": False,
            "properties": {f.name: f.schema() for f in self.fields},
        }
        required = [f.name for f in self.fields if f.required]
        if required:
            out["required"] = required
        if self.description:
            out["description"] = self.description
        return out


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class Param:
    """A query-string or header parameter (a single value)."""

    name: str
    type: str = "string"
    required: bool = False
    default: Any = None
    description: str = ""
    enum: tuple[str, ...] | None = None
    minimum: int | None = None
    location: str = "query"
    ulid: bool = False  # a string that must be a canonical ULID

    def parse(self, text: str | None) -> Any:
        if text is None:
            if self.required:
                raise _bad(self.name, "is required")
            return self.default
        if self.type == "integer":
            try:
                value: Any = int(text.strip())
            except ValueError:
                raise _bad(self.name, "must be an integer") from None
            if self.minimum is not None and value < self.minimum:
                raise _bad(self.name, f"must be >= {self.minimum}")
            return value
        if self.type == "boolean":
            lowered = text.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise _bad(self.name, "must be true or false")
        if self.enum is not None and text not in self.enum:
            raise _bad(self.name, f"must be one of {', '.join(self.enum)}")
        return _check_ulid(self.name, text) if self.ulid else text

    def spec(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": self.type}
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.ulid:
            schema["format"] = "ulid"
        if self.default is not None:
            schema["default"] = self.default
        out = {"name": self.name, "in": self.location, "required": self.required, "schema": schema}
        if self.description:
            out["description"] = self.description
        return out


# Parameters shared by many routes (the admin routes and the console routes).
LIMIT = Param("limit", "integer", default=100, minimum=1, description="at most this many rows")
WINDOW = (
    Param("start_at_unix_ms", "integer", minimum=0, description="default: end - 30 days"),
    Param("end_at_unix_ms", "integer", minimum=0, description="default: now"),
)

Handler = Callable[..., Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class Route:
    method: str
    path: str  # OpenAPI style: /admin/v1/runs/{run_id}
    handler: Handler
    summary: str
    tag: str
    response: str  # component schema name of the success body
    status: int = 200
    query: tuple[Param, ...] = ()
    headers: tuple[Param, ...] = ()
    body: Body | None = None
    public: bool = False  # no bearer token needed
    # The API-token scope that admits this route; None: only the admin token does.
    scope: str | None = None
    content_types: tuple[str, ...] = (JSON,)
    errors: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.handler.__name__

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    @property
    def rule(self) -> str:
        """The Quart/werkzeug rule for :attr:`path`."""
        return _PATH_PARAM.sub(r"<\1>", self.path)

    def parse_query(self, args: Mapping[str, Any]) -> dict[str, Any]:
        known = {p.name: p for p in self.query}
        for name in args:
            if name not in known:
                raise _bad(name, "unknown query parameter")
        out = {}
        for param in self.query:
            values = args.getlist(param.name) if hasattr(args, "getlist") else [args.get(param.name)]
            values = [v for v in values if v is not None]
            if len(values) > 1:
                raise _bad(param.name, "given more than once")
            out[param.name] = param.parse(values[0] if values else None)
        return out

    def parse_headers(self, headers: Mapping[str, str]) -> dict[str, Any]:
        return {p.name: p.parse(headers.get(p.name)) for p in self.headers}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# -- schemas of record dataclasses ------------------------------------------------------


def dataclass_schema(cls: type, refs: dict[str, type]) -> dict[str, Any]:
    """A JSON schema for a record dataclass from its type hints (nested dataclasses
    become references and are added to ``refs``)."""
    hints = typing.get_type_hints(cls)
    props = {}
    required = []
    for field in dataclasses.fields(cls):
        if field.name.startswith("_"):
            continue
        props[field.name] = _type_schema(hints[field.name], refs)
        required.append(field.name)
    return {"type": "object", "properties": props, "required": required,
            "description": (cls.__doc__ or cls.__name__).strip().splitlines()[0]}


def dataclass_schemas(*classes: type) -> dict[str, Any]:
    """Component schemas of ``classes`` and of every dataclass they nest."""
    refs: dict[str, type] = {}
    out = {cls.__name__: dataclass_schema(cls, refs) for cls in classes}
    while refs:
        name, cls = refs.popitem()
        if name not in out:
            out[name] = dataclass_schema(cls, refs)
    return out


def _type_schema(tp: Any, refs: dict[str, type]) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        inner = [_type_schema(a, refs) for a in args if a is not type(None)]
        if type(None) in args:
            inner.append({"type": "null"})
        return inner[0] if len(inner) == 1 else {"anyOf": inner}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if origin in (dict, Mapping) or tp is dict:
        return {"type": "object"}
    if origin in (list, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        items = _type_schema(args[0], refs) if args and args[0] is not Ellipsis else {}
        return {"type": "array", "items": items}
    if dataclasses.is_dataclass(tp):
        refs[tp.__name__] = tp
        return _ref(tp.__name__)
    return {}


def obj(properties: dict[str, Any], *, required: list[str] | None = None,
        description: str = "", additional: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    if description:
        out["description"] = description
    if not additional:
        out["additionalProperties"] = False
    return out


def array_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


ref = _ref


# -- the OpenAPI document ---------------------------------------------------------------

_ERRORS = {
    400: "invalid input (details.field names the offending field)",
    401: "missing or wrong bearer token (code invalid_api_token: an unknown, revoked or "
         "expired API token)",
    402: "a usage budget blocks this request",
    403: "permission denied (code missing_scope: the API token lacks details.scope; "
         "admin_token_required: an API token on an admin-only route)",
    404: "not found",
    409: "conflicts with the current state",
    413: "request body larger than 64 KiB",
    429: "rate limited (Retry-After says when to try again)",
    500: "internal error (details.error_id is logged)",
    502: "the model provider or the run failed",
    503: "the runtime or an actor is unavailable",
    504: "the runtime did not answer in time",
}


def openapi(routes: tuple[Route, ...], schemas: dict[str, Any], *, title: str,
            version: str, description: str = "") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    components = dict(schemas)
    for route in routes:
        op: dict[str, Any] = {
            "operationId": route.name,
            "summary": route.summary,
            "tags": [route.tag],
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in route.path_params
        ]
        params += [p.spec() for p in route.query]
        params += [{**p.spec(), "in": "header"} for p in route.headers]
        if params:
            op["parameters"] = params
        if route.body is not None:
            components[route.body.name] = route.body.schema()
            op["requestBody"] = {
                "required": any(f.required for f in route.body.fields),
                "content": {JSON: {"schema": _ref(route.body.name)}},
            }
        success: dict[str, Any] = {"description": route.summary, "content": {}}
        for content_type in route.content_types:
            schema = _ref(route.response) if content_type == JSON else {"type": "string"}
            success["content"][content_type] = {"schema": schema}
        responses: dict[str, Any] = {str(route.status): success}
        codes = set(route.errors) | ({400} if route.body or route.query else set())
        if not route.public:
            codes |= {401, 403, 429}
        codes.add(500)
        for code in sorted(codes):
            responses[str(code)] = {
                "description": _ERRORS.get(code, "error"),
                "content": {JSON: {"schema": _ref("Error")}},
            }
        op["responses"] = responses
        if route.public:
            op["security"] = []
        elif route.scope is not None:
            op["x-palyra-api-token-scope"] = route.scope
            op["description"] = (f"Accepts the admin token or an API token with the scope "
                                 f"`{route.scope}`.")
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": f"the admin token ({ADMIN_TOKEN_FILE}), "
                                                          "or on routes that name an "
                                                          "x-palyra-api-token-scope an API "
                                                          "token (palyra_...) with that scope"}},
            "schemas": components,
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
