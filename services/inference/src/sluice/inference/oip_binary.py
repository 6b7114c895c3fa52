"""The Open Inference Protocol's binary tensor data extension (KServe v2 / Triton).

A request or answer whose header `Inference-Header-Content-Length: N` is set is
N bytes of JSON followed by raw tensor data: each tensor whose `parameters`
say `binary_data_size: S` takes the next S bytes, in the order the tensors are
listed, instead of a JSON `data` list. Values are row-major, little-endian;
BOOL is one byte per value; BYTES is, per element, a 4-byte little-endian
length and the bytes. tritonclient sends and asks for binary data by default
(an answer in binary when the request's `parameters.binary_data_output` is
true, or an output's `parameters.binary_data` is).

Pure Python (`struct`), so the server needs no numpy.
"""

from __future__ import annotations

import struct
from typing import Any

HEADER = b"inference-header-content-length"
# OIP datatype -> struct format letter (little-endian); BF16 and BYTES handled apart.
FORMATS = {
    "BOOL": "?", "INT8": "b", "UINT8": "B", "INT16": "h", "UINT16": "H", "INT32": "i",
    "UINT32": "I", "INT64": "q", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d",
}  # fmt: skip


class BinaryError(ValueError):
    """Binary tensor data that does not match what the JSON header says."""


def split(raw: bytes, header_length: bytes) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of a body whose header length header is `header_length`."""
    try:
        size = int(header_length)
    except ValueError:
        raise BinaryError(
            f"Inference-Header-Content-Length {header_length!r} is not a number"
        ) from None
    if not 0 < size <= len(raw):
        raise BinaryError(
            f"Inference-Header-Content-Length {size} does not fit a body of {len(raw)} bytes"
        )
    return raw[:size], raw[size:]


def decode(datatype: str, data: bytes, count: int, name: str) -> list[Any]:
    """`count` values of `datatype` from raw bytes, as a flat list."""
    if datatype == "BYTES":
        values: list[Any] = []
        at = 0
        while at < len(data):
            if at + 4 > len(data):
                raise BinaryError(f"input {name!r}: BYTES element length cut short")
            (length,) = struct.unpack_from("<I", data, at)
            element = data[at + 4 : at + 4 + length]
            if len(element) != length:
                raise BinaryError(f"input {name!r}: BYTES element longer than the data")
            values.append(element.decode("utf-8", errors="replace"))
            at += 4 + length
    elif datatype == "BF16":
        if len(data) % 2:
            raise BinaryError(f"input {name!r}: {len(data)} bytes is not a number of BF16 values")
        values = [struct.unpack("<f", b"\0\0" + data[i : i + 2])[0] for i in range(0, len(data), 2)]
    else:
        letter = FORMATS[datatype]
        width = struct.calcsize(letter)
        if len(data) % width:
            raise BinaryError(
                f"input {name!r}: {len(data)} bytes is not a number of {datatype} values"
            )
        values = list(struct.unpack(f"<{len(data) // width}{letter}", data))
    if len(values) != count:
        raise BinaryError(
            f"input {name!r}: its shape needs {count} values, the data holds {len(values)}"
        )
    return values


def encode(datatype: str, flat: list[Any]) -> bytes:
    """A flat list of values as `datatype`'s raw bytes."""
    if datatype == "BYTES":
        parts = []
        for value in flat:
            raw = value.encode() if isinstance(value, str) else bytes(value)
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    if datatype == "BF16":
        return b"".join(struct.pack("<f", float(v))[2:] for v in flat)
    return struct.pack(f"<{len(flat)}{FORMATS[datatype]}", *flat)
