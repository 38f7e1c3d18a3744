"""Domain objects of the registry. Stores convert their rows to these at the boundary."""

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

# Fine-tuned adapters are also found by the name their job gave them, `ft:<base>:<suffix>:<job>`,
# kept in this tag of the version.
FINE_TUNED_TAG = "fine_tuned_model"


class VersionKind(StrEnum):
    """How a version was made."""

    BASE = "base"
    ADAPTER = "adapter"
    MERGED = "merged"
    DISTILLED = "distilled"
    PRUNED = "pruned"
    QUANTIZED = "quantized"
    EMBEDDING = "embedding"  # a sentence-embedding model, served on /v1/embeddings only


class VersionFormat(StrEnum):
    """What a version's files are."""

    HF_SAFETENSORS = "hf-safetensors"
    PEFT_LORA = "peft-lora"
    ONNX = "onnx"
    GGUF = "gguf"


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
    latest_version: int  # the highest version number registered, archived ones included
    owner: str | None = None  # the API key that made it; None: an operator's, visible to all


@dataclass(frozen=True)
class ModelVersion:
    """An immutable registered version. Only `archived_at` changes after registration."""

    name: str
    version: int
    kind: VersionKind
    format: VersionFormat
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
    owner: str | None = None  # the API key that owns it; None: an operator's, visible to all

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class Alias:
    name: str
    alias: str
    version: int
    updated_at: datetime


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
    # why a two-person alias moved without a second person's approval
    break_glass_reason: str | None = None


class PromotionStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True)
class PendingPromotion:
    """A promotion one admin requested and a second must approve or reject: the request
    (who, why, the gate's verdict when asked) and the decision (who, why, when)."""

    id: int
    name: str
    alias: str
    version: int
    requested_by: str
    reason: str
    gate: dict[str, Any] | None
    status: PromotionStatus
    decided_by: str | None
    decision_reason: str
    created_at: datetime = field(compare=False)
    decided_at: datetime | None = field(default=None, compare=False)
    event_id: int | None = None  # the alias move an approval made
