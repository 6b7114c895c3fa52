"""The REST API's OpenAPI 3.0 document, generated from the protos' descriptor set.

The same `google.api.http` rules Envoy's transcoder follows become the paths; the
messages become schemas in the proto3 JSON mapping the transcoder speaks (lowerCamelCase
names, 64-bit integers as strings, enums by name, Timestamps as RFC 3339 strings, maps as
objects); the .proto comments become descriptions. Nothing here is written by hand per
call, so the document cannot drift from what the listener serves.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

DESCRIPTOR_SET = "sluice_api.binpb"
PACKAGE = "sluice.v1"
F = descriptor_pb2.FieldDescriptorProto
_SCALARS: dict[int, dict[str, Any]] = {
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_INT64: {"type": "string", "format": "int64"},
    F.TYPE_UINT64: {"type": "string", "format": "uint64"},
    F.TYPE_SINT64: {"type": "string", "format": "int64"},
    F.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    F.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_FIXED32: {"type": "integer", "format": "int32"},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string"},
    ".google.protobuf.Struct": {"type": "object"},  # any JSON object (a PATCH's tags)
    ".google.protobuf.ListValue": {"type": "array", "items": {}},  # a cost query's row
}
_ERROR = {
    "type": "object",
    "description": "google.rpc.Status: the gRPC status code, its message and details.",
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"type": "object"}},
    },
}


def descriptor_set() -> bytes:
    """The FileDescriptorSet `make proto` writes beside the generated code."""
    return (resources.files(PACKAGE) / DESCRIPTOR_SET).read_bytes()


def _comments(fd: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(loc.path): loc.leading_comments.strip() or loc.trailing_comments.strip()
        for loc in fd.source_code_info.location
        if loc.leading_comments or loc.trailing_comments
    }


class _Schemas:
    def __init__(self, files: list[descriptor_pb2.FileDescriptorProto]):
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.docs: dict[str, str] = {}
        for fd in files:
            notes = _comments(fd)
            for i, msg in enumerate(fd.message_type):
                self._message(f".{fd.package}", msg, (4, i), notes)
            for i, enum in enumerate(fd.enum_type):
                self.enums[f".{fd.package}.{enum.name}"] = enum
                self.docs[f".{fd.package}.{enum.name}"] = notes.get((5, i), "")

    def _message(
        self,
        scope: str,
        msg: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
        notes: dict[tuple[int, ...], str],
    ) -> None:
        name = f"{scope}.{msg.name}"
        self.messages[name] = msg
        self.docs[name] = notes.get(path, "")
        for j, field in enumerate(msg.field):
            self.docs[f"{name}#{field.name}"] = notes.get((*path, 2, j), "")
        for j, nested in enumerate(msg.nested_type):
            self._message(name, nested, (*path, 3, j), notes)
        for enum in msg.enum_type:
            self.enums[f"{name}.{enum.name}"] = enum

    @staticmethod
    def ref(type_name: str) -> str:
        return "#/components/schemas/" + type_name.lstrip(".").removeprefix(PACKAGE + ".")

    def field_schema(self, field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        if field.type == F.TYPE_MESSAGE:
            entry = self.messages[field.type_name]
            if entry.options.map_entry:
                return {"type": "object", "additionalProperties": self.field_schema(entry.field[1])}
            schema = _WELL_KNOWN.get(field.type_name) or {"$ref": self.ref(field.type_name)}
        elif field.type == F.TYPE_ENUM:
            schema = {"type": "string", "enum": [v.name for v in self.enums[field.type_name].value]}
        else:
            schema = dict(_SCALARS[field.type])
        if field.label == F.LABEL_REPEATED:
            return {"type": "array", "items": schema}
        return schema

    def query(
        self, request: descriptor_pb2.DescriptorProto, in_path: set[str], prefix: str = ""
    ) -> list[dict[str, Any]]:
        """Query parameters: the request's fields not in the path, one level of nesting
        (`page.pageSize`, `window.start`), as the transcoder reads them."""
        params: list[dict[str, Any]] = []
        for field in request.field:
            if field.name in in_path:
                continue
            nested = self.messages.get(field.type_name) if field.type == F.TYPE_MESSAGE else None
            if nested is not None and field.type_name not in _WELL_KNOWN:
                if not prefix and not nested.options.map_entry:
                    params += self.query(nested, set(), f"{field.json_name}.")
                continue
            schema = self.field_schema(field)
            params.append({"name": prefix + field.json_name, "in": "query", "schema": schema})
        return params

    def used(self, roots: set[str]) -> dict[str, Any]:
        """Schemas of `roots` and every message they reach."""
        out: dict[str, Any] = {}
        todo = sorted(roots)
        while todo:
            name = todo.pop()
            key = self.ref(name).rsplit("/", 1)[-1]
            if key in out or name in _WELL_KNOWN:
                continue
            msg = self.messages[name]
            props = {}
            for field in msg.field:
                schema = self.field_schema(field)
                doc = self.docs.get(f"{name}#{field.name}")
                props[field.json_name] = {**schema, "description": doc} if doc else schema
                if field.type == F.TYPE_MESSAGE:
                    entry = self.messages[field.type_name]
                    value = entry.field[1] if entry.options.map_entry else field
                    if value.type == F.TYPE_MESSAGE:
                        todo.append(value.type_name)
            out[key] = {"type": "object", "properties": props}
            if self.docs.get(name):
                out[key]["description"] = self.docs[name]
        return out


def _rule(method: descriptor_pb2.MethodDescriptorProto) -> tuple[str, str, str] | None:
    if not method.options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    if verb is None or verb == "custom":
        return None
    return verb, getattr(rule, verb), rule.body


def _path_fields(template: str) -> list[str]:
    return re.findall(r"\{([^}=]+)", template)


def _param(dotted: str) -> str:
    return re.sub(r"_([a-z])", lambda m: m.group(1).upper(), dotted.rsplit(".", 1)[-1])


def document(data: bytes | None = None) -> dict[str, Any]:
    """The OpenAPI 3.0.3 document for every annotated method of sluice.v1."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(data or descriptor_set())
    schemas = _Schemas(list(fds.file))
    paths: dict[str, dict[str, Any]] = {}
    roots: set[str] = set()
    shapes: dict[str, list[str]] = {}
    for fd in fds.file:
        if fd.package != PACKAGE:
            continue
        notes = _comments(fd)
        for si, service in enumerate(fd.service):
            for mi, method in enumerate(service.method):
                rule = _rule(method)
                if rule is None or method.client_streaming:
                    continue
                verb, template, body = rule
                request = schemas.messages[method.input_type]
                in_path = _path_fields(template)
                params: list[dict[str, Any]] = [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in in_path
                ]
                if not body:
                    params += schemas.query(request, set(in_path))
                op: dict[str, Any] = {
                    "operationId": f"{service.name}_{method.name}",
                    "tags": [service.name],
                    "summary": notes.get((6, si, 2, mi), "") or method.name,
                    "parameters": params,
                    "responses": {
                        "200": {
                            "description": "OK"
                            + (" (a JSON array of messages)" if method.server_streaming else ""),
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": schemas.ref(method.output_type)}
                                }
                            },
                        },
                        "default": {
                            "description": "an error: the gRPC status as JSON",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Status"}
                                }
                            },
                        },
                    },
                }
                roots.add(method.output_type)
                if body:
                    if body == "*":
                        target = method.input_type
                    else:
                        field = next(f for f in request.field if f.name == body)
                        target = field.type_name
                    roots.add(target)
                    op["requestBody"] = {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": schemas.ref(target)}}},
                    }
                # A path parameter is named by its last field (`{spec.name}` -> `{name}`), and
                # like the first method on the same path (OpenAPI: one name per position).
                names = [_param(p) for p in in_path]
                shape = re.sub(r"\{[^}]+\}", "{}", template)
                names = shapes.setdefault(shape, names)
                path = shape.format(*("{" + n + "}" for n in names))
                for param, name in zip(params, names, strict=False):
                    param["name"] = name
                paths.setdefault(path, {})[verb] = op
    components = schemas.used(roots)
    components["Status"] = _ERROR
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Sluice management API",
            "version": "v1",
            "description": "REST over the sluice.v1 gRPC services, through Envoy's gRPC-JSON "
            "transcoder. Every call needs 'Authorization: Bearer <admin token>'.",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.items())),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"adminToken": []}],
    }
