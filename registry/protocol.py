"""Request and response models of the registry's HTTP API (and of `llm-registry --json`).
Responses are built from the registry's entities by attribute."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from registry.entities import AliasAction, PromotionStatus, VersionFormat, VersionKind

MAX_VERSION = 999_999_999  # as references allow; the columns hold 32-bit integers
MAX_EVENT_ID = 2**31 - 1
MAX_REASON = 4096
# A reason that must say something: not empty, not only white space.
GivenReason = Annotated[str, StringConstraints(min_length=1, max_length=MAX_REASON, pattern=r"\S")]


class _Object(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ModelObject(_Object):
    object: Literal["registry.model"] = "registry.model"
    name: str
    description: str
    created_at: datetime
    created_by: str
    latest_version: int = Field(description="Highest version number, archived ones included.")
    owner: str | None = Field(description="The API key that owns it; null: an operator's.")
    aliases: dict[str, int] = Field(
        default_factory=dict, description="Alias name -> version number."
    )


class VersionObject(_Object):
    object: Literal["registry.version"] = "registry.version"
    name: str
    version: int
    ref: str = Field(description="`name:version`.")
    kind: VersionKind = Field(description="How the version was made.")
    format: VersionFormat = Field(description="What its files are.")
    artifact_digest: str
    parent: str | None = Field(description="Reference of the version it derives from.")
    recipe_digest: str | None
    dataset_digests: list[str]
    metrics: dict[str, float]
    tags: dict[str, str]
    source: str
    created_by: str
    created_at: datetime
    archived_at: datetime | None
    owner: str | None = Field(description="The API key that owns it; null: an operator's.")


class VersionDetailsObject(VersionObject):
    lineage: list[VersionObject] = Field(description="Parent first, up to the root.")
    aliases: list[str] = Field(description="Aliases that point at this version.")


class AliasObject(_Object):
    object: Literal["registry.alias"] = "registry.alias"
    name: str
    alias: str
    version: int
    updated_at: datetime


class AliasEventObject(_Object):
    """One move of an alias in the audit log."""

    object: Literal["registry.alias_event"] = "registry.alias_event"
    id: int
    name: str
    alias: str
    action: AliasAction
    from_version: int | None = Field(description="None when the alias was created.")
    to_version: int | None = Field(description="None when the alias was deleted.")
    actor: str
    reason: str
    forced: bool = Field(description="Whether a failing gate was overridden.")
    gate: dict[str, Any] | None = Field(description="The gate's result, as recorded.")
    created_at: datetime
    break_glass_reason: str | None = Field(
        description="Why a two-person alias moved without a second admin's approval."
    )


class PromotionRequestObject(_Object):
    """A promotion that waits for a second person's approval, and its decision."""

    object: Literal["registry.promotion_request"] = "registry.promotion_request"
    id: int
    name: str
    alias: str
    version: int
    requested_by: str
    reason: str
    gate: dict[str, Any] | None = Field(description="The gate's result when it was asked.")
    status: PromotionStatus
    decided_by: str | None
    decision_reason: str
    created_at: datetime
    decided_at: datetime | None
    event_id: int | None = Field(description="The alias move an approval made.")


class FileObject(_Object):
    object: Literal["registry.file"] = "registry.file"
    path: str
    sha256: str
    size: int


class VerifyResult(BaseModel):
    ref: str
    ok: bool
    files: int
    bytes: int


class VersionFields(BaseModel):
    """What a registration records besides the files."""

    model_config = ConfigDict(extra="forbid")

    kind: VersionKind = VersionKind.BASE
    format: VersionFormat = VersionFormat.HF_SAFETENSORS
    parent: str | None = Field(None, description="Reference of the version this one derives from.")
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    recipe_digest: str | None = None
    dataset_digests: list[str] = Field(default_factory=list)
    source: str = ""
    description: str = ""
    allow_pickle: StrictBool = False
    expected_digest: str | None = Field(
        None,
        description="The artifact digest the files must hash to (`llm-registry` prints it); "
        "a registration whose files differ is refused.",
    )


class RegisterRequest(VersionFields):
    source_dir: str = Field(
        description="A folder in the server's import root (LLMOPS_IMPORT_ROOT), relative to it."
    )


class BreakGlassFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    break_glass_reason: GivenReason | None = Field(
        None,
        description="Why a two-person alias (LLMOPS_TWO_PERSON_ALIASES) moves without a second "
        "admin's approval; required for those aliases, recorded in the audit log.",
    )


class AliasRequest(BreakGlassFields):
    version: int = Field(ge=1, le=MAX_VERSION)
    reason: str = Field("", max_length=MAX_REASON)


class PromoteRequest(AliasRequest):
    force_reason: GivenReason | None = Field(
        None, description="Override a failing gate, saying why (recorded in the audit log)."
    )


class PromotionRequestBody(BaseModel):
    """Ask for a promotion that a second admin approves."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_VERSION)
    reason: GivenReason = Field(description="Why; recorded with the request.")


class ReasonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=MAX_REASON)


class RollbackRequest(ReasonRequest, BreakGlassFields):
    pass


class RejectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: GivenReason = Field(description="Why; recorded with the rejection.")
