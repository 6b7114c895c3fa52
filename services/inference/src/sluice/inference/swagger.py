"""`GET /swagger.json`: the user's own swagger.json, else one built from run()'s schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def swagger_document(code_dir: Path | None, schema: tuple[Any, Any] | None) -> bytes | None:
    """The swagger.json to serve, or None when the deployment declares no schema."""
    if code_dir is not None and (code_dir / "swagger.json").is_file():
        return (code_dir / "swagger.json").read_bytes()
    if schema is None:
        return None
    input_schema, output_schema = schema
    return orjson.dumps(_swagger2(input_schema, output_schema))


def _swagger2(input_schema: Any, output_schema: Any) -> dict[str, Any]:
    """A Swagger 2.0 document of the shape Azure's inference server generates."""
    error = {"type": "object", "properties": {"message": {"type": "string"}}}
    return {
        "swagger": "2.0",
        "info": {
            "title": "ML service",
            "description": "API specification for the scoring script's run()",
            "version": "1.0",
        },
        "schemes": ["https"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "securityDefinitions": {
            "Bearer": {
                "type": "apiKey",
                "name": "Authorization",
                "in": "header",
                "description": 'The endpoint key or token, as "Bearer <key>"',
            }
        },
        "paths": {
            "/": {
                "get": {
                    "operationId": "ServiceHealthCheck",
                    "description": "Liveness of the server",
                    "responses": {"200": {"description": "Healthy"}},
                }
            },
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
            "ServiceInput": input_schema or {"type": "object"},
            "ServiceOutput": output_schema or {"type": "object"},
            "ErrorResponse": error,
        },
    }
