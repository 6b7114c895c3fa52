"""Azure ML's curated environments, mapped to pip requirement sets shipped with Sluice.

A deployment that names `azureml://registries/azureml/environments/sklearn-1.5/labels/latest`
or `AzureML-sklearn-1.5:21` gets the requirement set of `curated_environments.yaml`,
built into a cached environment like any other. Unknown names are an error
that lists the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import yaml

from sluice.common.assets import AssetKind, ReferenceError_, parse_reference

AZUREML_PREFIX = "azureml-"


class UnknownCuratedEnvironment(LookupError):
    pass


@dataclass(frozen=True)
class CuratedEnvironment:
    name: str
    pip: tuple[str, ...]
    note: str = ""


class CuratedCatalogue:
    def __init__(self, environments: dict[str, CuratedEnvironment]):
        self._envs = {name.lower(): env for name, env in environments.items()}

    @classmethod
    def load(cls) -> CuratedCatalogue:
        text = files("sluice.common").joinpath("curated_environments.yaml").read_text()
        data = yaml.safe_load(text)["environments"]
        return cls(
            {
                name: CuratedEnvironment(name, tuple(entry.get("pip") or ()), entry.get("note", ""))
                for name, entry in data.items()
            }
        )

    @property
    def names(self) -> list[str]:
        return sorted(env.name for env in self._envs.values())

    @staticmethod
    def is_curated_name(name: str) -> bool:
        """`AzureML-...` names are reserved for curated environments, as on Azure."""
        return name.lower().startswith(AZUREML_PREFIX)

    def get(self, name: str) -> CuratedEnvironment:
        """By registry name (`sklearn-1.5`) or workspace name (`AzureML-sklearn-1.5`)."""
        key = name.lower()
        found = self._envs.get(key) or self._envs.get(key.removeprefix(AZUREML_PREFIX))
        if found is None:
            raise UnknownCuratedEnvironment(
                f"curated environment {name!r} is not in Sluice's catalogue; known: "
                f"{', '.join(self.names)} (or register your own with `sluice environment create`)"
            )
        return found

    def note_for(self, reference: str) -> str:
        """The catalogue's caveat for a curated environment reference ("" for any other)."""
        try:
            ref = parse_reference(reference, AssetKind.environment)
        except ReferenceError_:
            return ""
        if not (ref.curated or self.is_curated_name(ref.name)):
            return ""
        try:
            env = self.get(ref.name)
        except UnknownCuratedEnvironment:
            return ""
        return f"curated environment {env.name}: {env.note}" if env.note else ""
