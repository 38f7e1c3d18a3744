"""Domain objects of the registry. Stores convert their rows to these at the boundary."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class VersionKind(StrEnum):
    BASE = "base"
    ADAPTER = "adapter"
    MERGED = "merged"
    DISTILLED = "distilled"
    ONNX = "onnx"


class AliasAction(StrEnum):
    SET = "set"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    DELETE = "delete"


@dataclass(frozen=True)
class Model:
    name: str
    description: str
    created_at: datetime
    created_by: str


@dataclass(frozen=True)
class ModelVersion:
    """An immutable registered version. Only `archived_at` changes after registration."""

    name: str
    version: int
    kind: VersionKind
    format: str
    artifact_digest: str
    manifest_path: str  # relative to LLMOPS_HOME
    parent: str | None  # "name:version"
    recipe_digest: str | None
    dataset_digests: tuple[str, ...]
    metrics: dict[str, float]
    tags: dict[str, str]
    source: str
    created_by: str
    created_at: datetime
    archived_at: datetime | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "kind": self.kind.value,
            "format": self.format,
            "artifact_digest": self.artifact_digest,
            "manifest_path": self.manifest_path,
            "parent": self.parent,
            "recipe_digest": self.recipe_digest,
            "dataset_digests": list(self.dataset_digests),
            "metrics": self.metrics,
            "tags": self.tags,
            "source": self.source,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "archived_at": self.archived_at.isoformat() if self.archived_at else None,
        }


@dataclass(frozen=True)
class Alias:
    name: str
    alias: str
    version: int
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alias": self.alias,
            "version": self.version,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias: the audit trail. `from_version` is None when the alias was
    created, `to_version` is None when it was deleted."""

    id: int
    name: str
    alias: str
    action: AliasAction
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    forced: bool
    gate: dict[str, Any] | None
    created_at: datetime = field(compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "alias": self.alias,
            "action": self.action.value,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "actor": self.actor,
            "reason": self.reason,
            "forced": self.forced,
            "gate": self.gate,
            "created_at": self.created_at.isoformat(),
        }
