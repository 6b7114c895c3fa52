"""The MongoDB client factory (PyMongo's asyncio API, Motor's official successor)."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.settings import Settings

Document = dict[str, Any]


def create_mongo_client(uri: str, *, appname: str) -> AsyncMongoClient[Document]:
    """A client with UTC-aware datetimes and short server selection, so a
    missing database fails fast with a clear error instead of hanging."""
    return AsyncMongoClient(
        uri, appname=appname, tz_aware=True, serverSelectionTimeoutMS=5000, connect=False
    )


def database(client: AsyncMongoClient[Document], settings: Settings) -> AsyncDatabase[Document]:
    return client[settings.mongodb_database]


def require_uri(settings: Settings) -> str:
    if not settings.mongodb_uri:
        raise RuntimeError("SLUICE_MONGODB_URI is not set: start the platform with `sluice up`")
    return settings.mongodb_uri
