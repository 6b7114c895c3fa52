"""The MongoDB client factory (PyMongo's asyncio API, Motor's official successor)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from sluice.common.settings import Settings

Document = dict[str, Any]
SERVER_SELECTION_MS = 5000  # unless the URI sets its own serverSelectionTimeoutMS


def create_mongo_client(uri: str, *, appname: str) -> AsyncMongoClient[Document]:
    """A client with UTC-aware datetimes and short server selection, so a
    missing database fails fast with a clear error instead of hanging.

    Writes are acknowledged only once journaled (`j: true`) and, on a replica
    set, on a majority of members (`w: "majority"`): an acknowledged change
    survives a kill -9 of the server. No topology detection is needed:
    mongod (since 2.6) and SecantusDB accept `w: "majority"` on a single node,
    where it means the same as `w: 1` with the journal.

    The URI's own `serverSelectionTimeoutMS` is kept (PyMongo's keyword arguments would
    override it); the write concern is not negotiable.
    """
    query = {key.lower() for key, _ in parse_qsl(urlsplit(uri).query)}
    timeout: dict[str, Any] = {}
    if "serverselectiontimeoutms" not in query:
        timeout["serverSelectionTimeoutMS"] = SERVER_SELECTION_MS
    return AsyncMongoClient(
        uri,
        appname=appname,
        tz_aware=True,
        **timeout,
        connect=False,
        w="majority",
        journal=True,
    )


def database(client: AsyncMongoClient[Document], settings: Settings) -> AsyncDatabase[Document]:
    return client[settings.mongodb_database]


def require_uri(settings: Settings) -> str:
    if not settings.mongodb_uri:
        raise RuntimeError("SLUICE_MONGODB_URI is not set: start the platform with `sluice up`")
    return settings.mongodb_uri
