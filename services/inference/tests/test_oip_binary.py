"""The binary tensor data extension's encoding, for every OIP datatype."""

from __future__ import annotations

from typing import Any

import pytest

from sluice.inference.oip_binary import BinaryError, decode, encode


@pytest.mark.parametrize(
    ("datatype", "values", "width"),
    [
        ("BOOL", [True, False], 1), ("INT8", [-1, 2], 1), ("UINT8", [255, 0], 1),
        ("INT16", [-300, 7], 2), ("UINT16", [65535, 1], 2), ("INT32", [-(2**31), 5], 4),
        ("UINT32", [2**32 - 1, 0], 4), ("INT64", [-(2**63), 9], 8), ("UINT64", [2**64 - 1, 3], 8),
        ("FP16", [0.5, -2.0], 2), ("FP32", [1.5, -0.25], 4), ("FP64", [1e300, -3.5], 8),
        ("BF16", [1.0, -2.5], 2),
    ],
)  # fmt: skip
def test_fixed_width_types_round_trip(datatype: str, values: list[Any], width: int) -> None:
    raw = encode(datatype, values)
    assert len(raw) == width * len(values)
    assert decode(datatype, raw, len(values), "x") == values


def test_bytes_are_length_prefixed() -> None:
    raw = encode("BYTES", ["ab", "", "é"])
    assert raw == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x02\x00\x00\x00\xc3\xa9"
    assert decode("BYTES", raw, 3, "x") == ["ab", "", "é"]


@pytest.mark.parametrize(
    ("datatype", "raw", "count", "message"),
    [
        ("FP32", b"\x00" * 6, 1, "6 bytes is not a number of FP32 values"),
        ("FP32", b"\x00" * 8, 3, "its shape needs 3 values, the data holds 2"),
        ("BYTES", b"\x05\x00\x00\x00ab", 1, "BYTES element longer than the data"),
        ("BYTES", b"\x01\x00", 1, "BYTES element length cut short"),
        ("BF16", b"\x00", 1, "not a number of BF16 values"),
    ],
)  # fmt: skip
def test_data_that_does_not_match_the_header(
    datatype: str, raw: bytes, count: int, message: str
) -> None:
    with pytest.raises(BinaryError, match=message):
        decode(datatype, raw, count, "x")
