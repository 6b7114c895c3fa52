"""`GET /swagger.json[?version=2|3|3.1]`, as Azure's inference server answers it.

`version` is 2 (the default, also `2.0`), 3 (`3.0`) or 3.1; anything else is a 404.
The code folder's own file wins: `swagger.json` then `swagger2.json` for version 2,
`swagger3.json` for 3, `swagger3.1.json` for 3.1. Otherwise the document is
generated from run()'s `inference_schema` decorators (Swagger 2.0 `definitions`,
OpenAPI 3.x `components.schemas`); an undecorated run() gets Azure's
`{"type": "object", "example": {}}` for its input and output.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

# ?version= value -> the canonical version it asks for.
VERSIONS = {"2": "2", "2.0": "2", "3": "3", "3.0": "3", "3.1": "3.1"}
USER_FILES = {
    "2": ("swagger.json", "swagger2.json"),
    "3": ("swagger3.json",),
    "3.1": ("swagger3.1.json",),
}
UNDECLARED: dict[str, Any] = {"type": "object", "example": {}}


@dataclass(frozen=True)
class SwaggerDocuments:
    """The documents of one deployment, by canonical version, built once at start-up."""

    documents: dict[str, bytes]

    def for_query(self, version: str | None) -> bytes | None:
        """The document `?version=` asks for (default 2), or None for an unknown version."""
        canonical = VERSIONS.get(version if version is not None else "2")
        return None if canonical is None else self.documents[canonical]


def swagger_documents(code_dir: Path | None, schema: tuple[Any, Any] | None) -> SwaggerDocuments:
    input_schema, output_schema = schema if schema is not None else (UNDECLARED, UNDECLARED)
    documents = {}
    for version, names in USER_FILES.items():
        own = [code_dir / n for n in names if (code_dir / n).is_file()] if code_dir else []
        if own:
            documents[version] = own[0].read_bytes()
        elif version == "2":
            documents[version] = orjson.dumps(_swagger2(input_schema, output_schema))
        else:
            documents[version] = orjson.dumps(_openapi3(version, input_schema, output_schema))
    return SwaggerDocuments(documents)


def _info() -> dict[str, str]:
    return {
        "title": os.environ.get("SERVICE_NAME", "ML service"),
        "description": "API specification for the scoring script's run()",
        "version": os.environ.get("SERVICE_VERSION", "1.0"),
    }


BEARER = {
    "type": "apiKey",
    "name": "Authorization",
    "in": "header",
    "description": 'The endpoint key or token, as "Bearer <key>"',
}
ERROR = {"type": "object", "properties": {"message": {"type": "string"}}}
HEALTH = {
    "get": {
        "operationId": "ServiceHealthCheck",
        "description": "Liveness of the server",
        "responses": {"200": {"description": "Healthy"}},
    }
}


def _swagger2(input_schema: Any, output_schema: Any) -> dict[str, Any]:
    """A Swagger 2.0 document of the shape Azure's inference server generates."""
    return {
        "swagger": "2.0",
        "info": _info(),
        "schemes": ["https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {"Bearer": BEARER},
        "paths": {
            "/": HEALTH,
            "/score": {
                "post": {
                    "operationId": "RunMLService",
                    "description": "Run the scoring script on the request body",
                    "security": [{"Bearer": []}],
                    "parameters": [
                        {
                            "name": "serviceInputPayload",
                            "in": "body",
                            "description": "The input payload for run()",
                            "schema": {"$ref": "#/definitions/ServiceInput"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "Success",
                            "schema": {"$ref": "#/definitions/ServiceOutput"},
                        },
                        "default": {
                            "description": "Failure",
                            "schema": {"$ref": "#/definitions/ErrorResponse"},
                        },
                    },
                }
            },
        },
        "definitions": {
            "ServiceInput": input_schema,
            "ServiceOutput": output_schema,
            "ErrorResponse": ERROR,
        },
    }


def _openapi3(version: str, input_schema: Any, output_schema: Any) -> dict[str, Any]:
    """The same API as OpenAPI 3.0 or 3.1 (schemas under `components`)."""

    def body(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}

    return {
        "openapi": "3.1.0" if version == "3.1" else "3.0.1",
        "info": _info(),
        "paths": {
            "/": HEALTH,
            "/score": {
                "post": {
                    "operationId": "RunMLService",
                    "description": "Run the scoring script on the request body",
                    "security": [{"Bearer": []}],
                    "requestBody": {
                        "description": "The input payload for run()",
                        "required": True,
                        "content": body("ServiceInput"),
                    },
                    "responses": {
                        "200": {"description": "Success", "content": body("ServiceOutput")},
                        "default": {"description": "Failure", "content": body("ErrorResponse")},
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "ServiceInput": input_schema,
                "ServiceOutput": output_schema,
                "ErrorResponse": ERROR,
            },
            "securitySchemes": {"Bearer": BEARER},
        },
    }
