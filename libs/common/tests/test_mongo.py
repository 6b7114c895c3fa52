"""The MongoDB client factory's options."""

from __future__ import annotations

import pytest

from sluice.common.mongo import SERVER_SELECTION_MS, create_mongo_client


@pytest.mark.parametrize(
    ("uri", "seconds"),
    [
        ("mongodb://127.0.0.1:27017", SERVER_SELECTION_MS / 1000),
        ("mongodb://127.0.0.1:27017/?serverSelectionTimeoutMS=1200", 1.2),
        ("mongodb://127.0.0.1:27017/sluice?appName=x&serverselectiontimeoutms=700", 0.7),
        ("mongodb://127.0.0.1:27017/?w=1&journal=false", SERVER_SELECTION_MS / 1000),
    ],
)
async def test_a_uri_s_own_server_selection_timeout_wins_and_writes_stay_majority_journaled(
    uri: str, seconds: float
) -> None:
    client = create_mongo_client(uri, appname="test")
    try:
        assert client.options.server_selection_timeout == pytest.approx(seconds)
        concern = client.write_concern.document
        assert concern == {"w": "majority", "j": True}
    finally:
        await client.close()
