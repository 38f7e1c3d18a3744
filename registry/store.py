"""The registry store interface. `registry.sql_store.SqlStore` implements it on SQLAlchemy.

Every method is atomic. Methods that change an alias take the version the caller saw
(`expected_from`) and raise CONFLICT when another writer moved the alias in between, so a
gate decision is never applied to a champion it did not look at.

Listing methods page: `limit` rows after the cursor `after` (the last item of the previous
page: a model name, a `name:version` reference or an event id); `limit` None lists all.
"""

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from registry.entities import (
    Alias,
    AliasAction,
    AliasEvent,
    Model,
    ModelVersion,
    PendingPromotion,
    PromotionStatus,
    VersionFormat,
    VersionKind,
)


class RegistryStore(ABC):
    @abstractmethod
    def get_model(self, name: str) -> Model:
        """The model `name`; NOT_FOUND if it has never been registered."""

    @abstractmethod
    def list_models(
        self, query: str | None = None, *, limit: int | None = None, after: str | None = None
    ) -> list[Model]:
        """Models by name; `query` keeps those whose name contains it."""

    @abstractmethod
    def add_version(
        self,
        name: str,
        *,
        kind: VersionKind,
        format: VersionFormat,
        artifact_digest: str,
        manifest_path: str,
        parent: tuple[str, int] | None,
        recipe_digest: str | None,
        dataset_digests: Sequence[str],
        metrics: dict[str, float],
        tags: dict[str, str],
        source: str,
        description: str,
        actor: str,
        owner: str | None = None,
    ) -> ModelVersion:
        """Register the next version of `name`, creating the model on its first version
        (owned by `owner`, an API key id, or by no one). The version belongs to the model's
        owner; PERMISSION_DENIED if `owner` is set and the model is someone else's.

        ALREADY_EXISTS if `name` already has a version with this artifact digest; NOT_FOUND if
        `parent` is not registered."""

    @abstractmethod
    def get_version(self, name: str, version: int) -> ModelVersion:
        """One version; NOT_FOUND if the model or the version does not exist."""

    @abstractmethod
    def list_versions(
        self,
        name: str | None = None,
        *,
        kind: VersionKind | None = None,
        tags: Mapping[str, str | None] | None = None,
        include_archived: bool = False,
        limit: int | None = None,
        after: tuple[str, int] | None = None,
    ) -> list[ModelVersion]:
        """Versions ordered by name and number, optionally of one model or kind, carrying
        every tag of `tags` (a None value: the tag with any value); NOT_FOUND if `name` is
        given and not registered."""

    @abstractmethod
    def archive_version(self, name: str, version: int, actor: str) -> ModelVersion:
        """Mark a version archived. CONFLICT while an alias points at it."""

    @abstractmethod
    def get_alias(self, name: str, alias: str) -> Alias | None:
        """The alias, or None if `name` has no such alias; NOT_FOUND if there is no model."""

    @abstractmethod
    def list_aliases(self, name: str | None = None) -> list[Alias]:
        """Aliases ordered by model and alias name."""

    @abstractmethod
    def move_alias(
        self,
        name: str,
        alias: str,
        *,
        to_version: int | None,
        expected_from: int | None,
        action: AliasAction,
        actor: str,
        reason: str,
        forced: bool = False,
        gate: dict[str, Any] | None = None,
        break_glass_reason: str | None = None,
    ) -> AliasEvent:
        """Point `alias` at `to_version` (None deletes it) and append the audit event.

        CONFLICT if the alias does not point at `expected_from` (None: does not exist) or the
        target is archived; NOT_FOUND if the target version does not exist."""

    @abstractmethod
    def alias_events(
        self,
        name: str,
        alias: str | None = None,
        *,
        limit: int | None = None,
        after: int | None = None,
    ) -> list[AliasEvent]:
        """The audit log of `name` (optionally one alias), oldest first."""

    @abstractmethod
    def add_pending(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        actor: str,
        reason: str,
        gate: dict[str, Any] | None,
    ) -> PendingPromotion:
        """Record a promotion of `name:version` to `alias` that waits for approval;
        NOT_FOUND if the version does not exist."""

    @abstractmethod
    def get_pending(self, promotion_id: int) -> PendingPromotion:
        """One promotion request; NOT_FOUND if there is none with this id."""

    @abstractmethod
    def list_pending(
        self, name: str | None = None, status: PromotionStatus | None = None
    ) -> list[PendingPromotion]:
        """Promotion requests, newest first, optionally of one model or in one status."""

    @abstractmethod
    def decide_pending(
        self,
        promotion_id: int,
        status: PromotionStatus,
        *,
        actor: str,
        reason: str,
        event_id: int | None = None,
    ) -> PendingPromotion:
        """Close a pending request as approved or rejected; CONFLICT if it was decided
        already."""
