"""The catalogue of instance types (instance_types.yaml): vCPUs, memory, hourly price."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import yaml


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gb: float
    price_per_hour: float
    gpus: int = 0

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * 1024**3)


class UnknownInstanceType(ValueError):
    pass


class Catalogue:
    def __init__(self, types: dict[str, InstanceType], default: str):
        self._types = {name.lower(): t for name, t in types.items()}
        self.default = default

    @classmethod
    def load(cls) -> Catalogue:
        data = yaml.safe_load(files("sluice.common").joinpath("instance_types.yaml").read_text())
        types = {name: InstanceType(name=name, **fields) for name, fields in data["types"].items()}
        return cls(types, data["default"])

    def resolve(self, name: str) -> InstanceType:
        """Azure's names, case-insensitively (`standard_ds3_v2` works as on Azure)."""
        found = self._types.get((name or self.default).lower())
        if found is None:
            known = ", ".join(sorted(t.name for t in self._types.values()))
            raise UnknownInstanceType(f"instance_type {name!r} is not in the catalogue ({known})")
        return found
