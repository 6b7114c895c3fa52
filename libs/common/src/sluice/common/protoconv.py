"""Resource models (pydantic) <-> protobuf messages, by field name.

The proto messages in proto/sluice/v1 and the models in sluice.common.resources
share field names, so conversion goes through protobuf's JSON mapping; only
enum spellings differ (AUTH_MODE_KEY <-> "key", PROVISIONING_STATE_SUCCEEDED
<-> "Succeeded").
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
P = TypeVar("P", bound=Message)


class ConversionError(ValueError):
    """A message does not make a valid resource; the message names the field."""


# Proto enum fields and the prefix of their value names (AUTH_MODE_KEY <-> "key").
ENUM_FIELDS = {
    "auth_mode": "AUTH_MODE_",
    "kind": "COMPUTE_KIND_",
    "provisioning_state": "PROVISIONING_STATE_",
    "output_action": "OUTPUT_ACTION_",
}


def _enum_to_model(key: str, value: str) -> str | None:
    name = value.removeprefix(ENUM_FIELDS[key])
    if name == "UNSPECIFIED":
        return None
    return name.title() if key == "provisioning_state" else name.lower()


def _walk(value: Any, convert: Callable[[str, str], str | None]) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ENUM_FIELDS and isinstance(item, str):
                converted = convert(key, item)
                if converted is not None:
                    out[key] = converted
            else:
                out[key] = _walk(item, convert)
        return out
    if isinstance(value, list):
        return [_walk(v, convert) for v in value]
    return value


def to_model(message: Message, model: type[M], *, exclude: Collection[str] = ()) -> M:
    """A message -> a resource model.

    Scalars count as given even when zero (proto3 cannot tell 0 from unset), so
    `instance_count: 0` is rejected rather than silently defaulted; submessages
    and `optional` fields left unset take the model's defaults.

    `exclude` names top-level fields the message has and the model does not
    (derived views such as `scoring_uri`).
    """
    raw = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    raw = {k: v for k, v in raw.items() if k not in exclude}
    try:
        return model.model_validate(_walk(raw, _enum_to_model))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConversionError(f"{where}: {first['msg']}") from exc


def to_proto(model: BaseModel, message: P) -> P:
    raw = _walk(
        model.model_dump(mode="json", exclude={"keys"}),
        lambda key, value: ENUM_FIELDS[key] + value.upper(),
    )
    return json_format.ParseDict(raw, message, ignore_unknown_fields=False)
