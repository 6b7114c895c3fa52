"""ListAssets' page tokens: a position in the listing's order, not an index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sluice.common.assets import AssetDoc, AssetKind, AssetSpec, newest_first
from sluice.common.resources import Meta
from sluice.registry.assets import _follows, page_token
from sluice.registry.domain import InvalidArgument

AT = datetime(2026, 1, 1, tzinfo=UTC)


def doc(name: str, version: str, seconds: int) -> AssetDoc:
    spec = AssetSpec(asset_kind=AssetKind.environment, name=name, version=version, image="i")
    return AssetDoc(spec=spec, meta=Meta(created_at=AT + timedelta(seconds=seconds)))


def test_versions_resume_after_the_token_even_when_newer_ones_arrive() -> None:
    docs = newest_first([doc("e", "1", 0), doc("e", "2", 1), doc("e", "3", 1), doc("e", "4", 2)])
    token = page_token(docs[1], by_name=False)  # a page ended at version 3
    docs.insert(0, doc("e", "5", 3))  # created between the pages: not in the next one
    rest = [d.spec.version for d in docs if _follows(token, by_name=False)(d)]
    assert rest == ["2", "1"]


def test_names_resume_after_the_token() -> None:
    docs = [doc("a", "1", 0), doc("b", "1", 0), doc("c", "1", 0)]
    token = page_token(docs[0], by_name=True)
    assert [d.spec.name for d in docs if _follows(token, by_name=True)(d)] == ["b", "c"]


@pytest.mark.parametrize("token", ["nonsense", "[1]", '["name"]', '["created", "x", "1"]'])
def test_a_token_this_listing_did_not_give_is_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="was not given by this listing"):
        _follows(token, by_name=False)
