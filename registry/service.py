"""The registry's operations, over a store and an artifact store: what the CLI and the HTTP
router call."""

import copy
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from core.database import open_database
from core.errors import ErrorCode
from core.refs import ModelRef, parse_ref, validate_alias, validate_name
from core.settings import StackSettings
from registry.artifacts import ArtifactStore, Manifest, OnProgress
from registry.entities import (
    FINE_TUNED_TAG,
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
from registry.errors import AliasMovedError, RegistryError
from registry.gates import Gate, GateResult, load_gate
from registry.model_files import check_version_files
from registry.settings import (
    DEFAULT_MAX_UPLOAD_BYTES,
    UNPACKED_PER_UPLOAD,
    RegistrySettings,
)
from registry.sql_store import SqlStore
from registry.store import RegistryStore
from registry.tables import CHAIN
from registry.uploads import unpack_archive

_ALIAS_RETRIES = 20
MAX_TAG_KEY = 128  # the widths of the tag columns
MAX_TAG_VALUE = 512
T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)


@dataclass(frozen=True)
class VersionDetails:
    version: ModelVersion
    lineage: tuple[ModelVersion, ...]  # parent first, up to the root
    aliases: tuple[str, ...]  # aliases that point at this version


class Registry:
    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactStore,
        gate: Gate,
        actor: str,
        models_cache: Path,
        import_root: Path | None = None,
        *,
        remote_code_models: frozenset[str] = frozenset(),
        max_unpacked_bytes: int = UNPACKED_PER_UPLOAD * DEFAULT_MAX_UPLOAD_BYTES,
        two_person_aliases: frozenset[str] = frozenset(),
    ):
        self.store = store
        self.artifacts = artifacts
        self.gate = gate
        self.actor = actor
        self.models_cache = models_cache
        self.import_root = import_root
        self.remote_code_models = remote_code_models
        self.max_unpacked_bytes = max_unpacked_bytes
        self.two_person_aliases = two_person_aliases
        self.made_by: tuple[tuple[str, datetime], ...] = ()

    def acting_as(
        self, actor: str, *, made_by: tuple[tuple[str, datetime], ...] = ()
    ) -> "Registry":
        """This registry, recording `actor` in the audit log (a caller over HTTP); `made_by`
        is who made the caller's key (`core.callers.Caller.made_by`)."""
        registry = copy.copy(self)
        registry.actor = actor
        registry.made_by = made_by
        return registry

    def gated_by(self, gate: Gate) -> "Registry":
        """This registry, with promotions judged by `gate` (a loop's policy gate)."""
        registry = copy.copy(self)
        registry.gate = gate
        return registry

    # -- versions -------------------------------------------------------------------------

    def register(
        self,
        name: str,
        source_dir: Path,
        *,
        kind: VersionKind | str = VersionKind.BASE,
        format: VersionFormat | str = VersionFormat.HF_SAFETENSORS,
        parent: str | None = None,
        metrics: dict[str, float] | None = None,
        tags: dict[str, str] | None = None,
        recipe_digest: str | None = None,
        dataset_digests: tuple[str, ...] | list[str] = (),
        source: str = "",
        description: str = "",
        allow_pickle: bool = False,
        owner: str | None = None,
        expected_digest: str | None = None,
        on_progress: OnProgress | None = None,
    ) -> ModelVersion:
        """Copy `source_dir` into the artifact store and record it as the next version; an
        `owner` (API key id) may add versions only to models it owns or creates. With
        `expected_digest`, files that hash to another artifact digest are refused. Files that
        would run code when the version is loaded are refused (`registry.model_files`).
        `on_progress(done, total)` follows the bytes hashed and copied."""
        validate_name(name)
        kind = _choice(VersionKind, kind, "kind")
        format = _choice(VersionFormat, format, "format")
        tags = {k: str(v) for k, v in (tags or {}).items()}
        for key, value in tags.items():
            if not 0 < len(key) <= MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
                raise RegistryError(
                    ErrorCode.INVALID,
                    f"tag {key[:40]!r}: keys have 1 to {MAX_TAG_KEY} characters and values up "
                    f"to {MAX_TAG_VALUE}",
                    param="tags",
                )
        parent_version = self.resolve(parent) if parent else None
        check_version_files(Path(source_dir), name, trust_remote_code=self.trusts_remote_code(name))
        manifest, manifest_path = self.artifacts.put(
            Path(source_dir), allow_pickle=allow_pickle, on_progress=on_progress
        )
        if expected_digest is not None and manifest.digest != expected_digest:
            raise RegistryError(
                ErrorCode.INVALID,
                f"the files hash to {manifest.digest}, not the expected {expected_digest}; the "
                "upload was changed or cut short",
                param="artifact_digest",
            )
        return self.store.add_version(
            name,
            kind=kind,
            format=format,
            artifact_digest=manifest.digest,
            manifest_path=manifest_path,
            parent=(parent_version.name, parent_version.version) if parent_version else None,
            recipe_digest=recipe_digest,
            dataset_digests=list(dataset_digests),
            metrics={k: float(v) for k, v in (metrics or {}).items()},
            tags=tags,
            source=source,
            description=description,
            actor=self.actor,
            owner=owner,
        )

    def register_archive(self, name: str, archive: BinaryIO, **fields: Any) -> ModelVersion:
        """Register the files of a tar archive (see `register` for the fields)."""
        staging = self.artifacts.root / "uploads"
        staging.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=staging))
        try:
            unpack_archive(archive, folder, self.max_unpacked_bytes)
            return self.register(name, folder, **fields)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def trusts_remote_code(self, name: str) -> bool:
        """Whether versions of `name` may carry code that transformers runs when it loads
        them: loaders pass this as `trust_remote_code`."""
        return name in self.remote_code_models

    def importable(self, source_dir: str) -> Path:
        """`source_dir` if it lies in the import root, the one server folder HTTP clients may
        register from by path; PERMISSION_DENIED otherwise."""
        if self.import_root is None:
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED,
                "registering a server folder over HTTP is off: upload the files as a tar "
                "archive (POST .../versions/upload), or set LLMOPS_IMPORT_ROOT on the server",
                param="source_dir",
            )
        root = self.import_root.resolve()
        path = (root / source_dir).resolve()
        if not path.is_relative_to(root):
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED,
                "source_dir must lie in the server's import root; give a path relative to it",
                param="source_dir",
            )
        return path

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        """The version a reference names: `name`, `name:version`, `name@alias`, or the
        `ft:<base>:<suffix>:<job-id>` name a fine-tuning job gave its adapter."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        if ref.fine_tuned is not None:
            return self._fine_tuned(ref.fine_tuned)
        if ref.version is not None:
            return self.store.get_version(ref.name, ref.version)
        return self.store.get_version(ref.name, self._alias_target(ref.name, ref.alias))

    def _fine_tuned(self, name: str) -> ModelVersion:
        found = self.store.list_versions(tags={FINE_TUNED_TAG: name}, limit=1)
        if not found:
            raise RegistryError(
                ErrorCode.NOT_FOUND,
                f"no fine-tuned model {name!r}; it is registered when its job succeeds "
                "(see llm-finetune list)",
                param="model",
            )
        return found[0]

    def list_models(
        self, query: str | None = None, *, limit: int | None = None, after: str | None = None
    ) -> list[Model]:
        return self.store.list_models(query, limit=limit, after=after)

    def list_versions(
        self,
        name: str | None = None,
        *,
        kind: VersionKind | None = None,
        tags: dict[str, str | None] | None = None,
        include_archived: bool = False,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[ModelVersion]:
        """Versions, optionally of one model, of one kind, or carrying all of `tags`; a page
        of `limit` after the reference `after` (`name:version`)."""
        cursor = None
        if after is not None:
            ref = parse_ref(after, "after")
            if ref.version is None:
                raise RegistryError(
                    ErrorCode.INVALID,
                    f"after {after!r} is not a version reference like 'demo:2'",
                    param="after",
                )
            cursor = (ref.name, ref.version)
        return self.store.list_versions(
            validate_name(name) if name else None,
            kind=kind,
            tags=tags,
            include_archived=include_archived,
            limit=limit,
            after=cursor,
        )

    def show(self, ref: str) -> VersionDetails:
        version = self.resolve(ref)
        held = tuple(
            a.alias for a in self.store.list_aliases(version.name) if a.version == version.version
        )
        return VersionDetails(version, self.lineage(version), held)

    def lineage(
        self, version: ModelVersion, known: Mapping[str, ModelVersion] | None = None
    ) -> tuple[ModelVersion, ...]:
        """The version's ancestors, parent first; `known` (versions by ref, already read)
        spares the store a query per ancestor."""
        known = known or {}
        chain: list[ModelVersion] = []
        current = version
        while current.parent:
            current = known.get(current.parent) or self.resolve(current.parent)
            chain.append(current)
        return tuple(chain)

    def base_of(self, version: ModelVersion) -> ModelVersion:
        """The version whose weights an adapter applies to (a non-adapter is its own)."""
        while version.kind is VersionKind.ADAPTER:
            if version.parent is None:
                raise RegistryError(
                    ErrorCode.INVALID,
                    f"adapter {version.ref} has no base version to apply to",
                    param="model",
                )
            version = self.resolve(version.parent)
        return version

    def fetch(self, ref: str, dest: Path, on_progress: OnProgress | None = None) -> Manifest:
        """Copy a version's files into the new directory `dest`, verified; `on_progress(done,
        total)` follows the bytes copied and hashed."""
        return self.artifacts.fetch(self.resolve(ref).artifact_digest, Path(dest), on_progress)

    def local_copy(self, version: ModelVersion) -> Path:
        """A verified copy of the version's files in the models cache, fetched once per digest
        (see `ArtifactStore.cached_copy`)."""
        path = self.models_cache / version.artifact_digest.removeprefix("sha256:")
        return self.artifacts.cached_copy(version.artifact_digest, path)

    def verify(self, ref: str) -> Manifest:
        """Re-hash a version's stored files; INTEGRITY names the first bad one."""
        return self.artifacts.verify(self.resolve(ref).artifact_digest)

    def archive(self, ref: str) -> ModelVersion:
        version = self.resolve(ref)
        return self.store.archive_version(version.name, version.version, self.actor)

    # -- aliases --------------------------------------------------------------------------

    def aliases(self, name: str | None = None) -> list[Alias]:
        return self.store.list_aliases(validate_name(name) if name else None)

    def set_alias(
        self, name: str, alias: str, version: int, *, reason: str = "", break_glass: str = ""
    ) -> AliasEvent:
        """Point `name@alias` at `version` without a gate (creating the alias if needed); a
        two-person alias needs a `break_glass` reason."""
        validate_name(name)
        validate_alias(alias)
        glass = self._break_glass(name, alias, break_glass)
        return self._retry(
            lambda: self.store.move_alias(
                name,
                alias,
                to_version=version,
                expected_from=self._current(name, alias),
                action=AliasAction.SET,
                actor=self.actor,
                reason=reason,
                break_glass_reason=glass,
            )
        )

    def delete_alias(
        self, name: str, alias: str, *, reason: str = "", break_glass: str = ""
    ) -> AliasEvent:
        current = self._alias_target(validate_name(name), validate_alias(alias))
        glass = self._break_glass(name, alias, break_glass)
        return self.store.move_alias(
            name,
            alias,
            to_version=None,
            expected_from=current,
            action=AliasAction.DELETE,
            actor=self.actor,
            reason=reason,
            break_glass_reason=glass,
        )

    def promote(
        self,
        ref: str,
        alias: str,
        *,
        reason: str = "",
        force: bool = False,
        break_glass: str = "",
    ) -> AliasEvent:
        """Move `alias` to the version `ref` names if the promotion gate passes it against the
        alias's current version. `force` overrides a failing gate and needs a reason; a
        two-person alias moves only on approval (`approve`) or with a `break_glass` reason."""
        validate_alias(alias)
        candidate = self.resolve(ref)
        glass = self._break_glass(candidate.name, alias, break_glass)
        return self._promote(candidate, alias, reason=reason, force=force, break_glass=glass)

    def _promote(
        self,
        candidate: ModelVersion,
        alias: str,
        *,
        reason: str,
        force: bool = False,
        break_glass: str | None = None,
    ) -> AliasEvent:
        if force and not reason.strip():
            raise RegistryError(
                ErrorCode.INVALID,
                "a forced promotion needs a reason; pass --reason to say why the gate is "
                "overridden",
                param="reason",
            )

        def attempt() -> AliasEvent:
            current = self._current(candidate.name, alias)
            result = self._judge(candidate, alias, current, force=force)
            return self.store.move_alias(
                candidate.name,
                alias,
                to_version=candidate.version,
                expected_from=current,
                action=AliasAction.PROMOTE,
                actor=self.actor,
                reason=reason,
                forced=force and not result.passed,
                gate=result.to_dict(),
                break_glass_reason=break_glass,
            )

        return self._retry(attempt)

    def _break_glass(self, name: str, alias: str, reason: str) -> str | None:
        """The break-glass reason to record for a move of `name@alias` that no second admin
        approved: required (PERMISSION_DENIED without it) for a two-person alias."""
        if reason.strip():
            return reason
        if alias not in self.two_person_aliases:
            return None
        raise RegistryError(
            ErrorCode.PERMISSION_DENIED,
            f"{name}@{alias} moves only when a second admin approves a promotion request "
            f"(`llm-registry request create {name}:VERSION {alias}`); to move it alone, give a "
            "break-glass reason (--break-glass, or break_glass_reason over HTTP), which the "
            "audit log records",
            param="break_glass_reason",
            api_code="break_glass_required",
        )

    def _judge(
        self, candidate: ModelVersion, alias: str, current: int | None, *, force: bool = False
    ) -> GateResult:
        """The gate's verdict on `candidate` against the version `current`; GATE_FAILED when
        it fails and is not forced."""
        champion = self.store.get_version(candidate.name, current) if current else None
        result = self.gate(candidate, champion, alias)
        if not result.passed and not force:
            raise RegistryError(
                ErrorCode.GATE_FAILED,
                f"promotion of {candidate.ref} to {candidate.name}@{alias} failed gate "
                f"{result.gate}: {result.details.get('reason', result.details)}; improve the "
                "candidate, or pass --force "
                "with --reason to override",
            )
        return result

    # -- promotions that need a second admin ------------------------------------------------

    def request_promotion(self, ref: str, alias: str, *, reason: str) -> PendingPromotion:
        """Ask for `alias` to move to the version `ref` names, once a second person approves.
        The gate judges the candidate now (a failing one is refused at once) and again on
        approval, against the champion of that moment."""
        validate_alias(alias)
        if not reason.strip():
            raise RegistryError(
                ErrorCode.INVALID, "a promotion request needs a reason", param="reason"
            )
        candidate = self.resolve(ref)
        result = self._judge(candidate, alias, self._current(candidate.name, alias))
        return self.store.add_pending(
            candidate.name,
            alias,
            candidate.version,
            actor=self.actor,
            reason=reason,
            gate=result.to_dict(),
        )

    def pending(
        self, name: str | None = None, status: PromotionStatus | None = None
    ) -> list[PendingPromotion]:
        return self.store.list_pending(validate_name(name) if name else None, status)

    def promotion_request(self, name: str, promotion_id: int) -> PendingPromotion:
        """The promotion request `promotion_id` of model `name`; NOT_FOUND otherwise."""
        request = self.store.get_pending(promotion_id)
        if request.name != validate_name(name):
            raise RegistryError(
                ErrorCode.NOT_FOUND,
                f"model {name!r} has no promotion request {promotion_id}",
                param="promotion_id",
            )
        return request

    def approve(self, promotion_id: int, *, reason: str = "") -> AliasEvent:
        """Approve a pending promotion as a second person: the alias moves through the gate
        (its event names both people) and the request is closed with the event's id."""
        request = self._open_request(promotion_id)
        self._check_key_maker(request)
        requested = f"requested by {request.requested_by}: {request.reason}"
        event = self._promote(
            self.store.get_version(request.name, request.version),
            request.alias,
            reason=f"approved request {request.id} ({requested})"
            + (f"; {reason}" if reason.strip() else ""),
        )
        self.store.decide_pending(
            request.id,
            PromotionStatus.APPROVED,
            actor=self.actor,
            reason=reason,
            event_id=event.id,
        )
        return event

    def _check_key_maker(self, request: PendingPromotion) -> None:
        """PERMISSION_DENIED when the requester made the approving key (or a key that made
        it) after asking: that would be the same admin approving their own request."""
        for maker, made_at in reversed(self.made_by):
            if made_at <= request.created_at:
                return
            if maker == request.requested_by:
                raise RegistryError(
                    ErrorCode.PERMISSION_DENIED,
                    f"promotion request {request.id} was made by {maker}, who made this key "
                    "after asking; a second admin must approve it with a key of their own",
                    param="promotion_id",
                )

    def reject(self, promotion_id: int, *, reason: str) -> PendingPromotion:
        if not reason.strip():
            raise RegistryError(
                ErrorCode.INVALID, "rejecting a promotion request needs a reason", param="reason"
            )
        request = self._open_request(promotion_id)
        return self.store.decide_pending(
            request.id, PromotionStatus.REJECTED, actor=self.actor, reason=reason
        )

    def _open_request(self, promotion_id: int) -> PendingPromotion:
        request = self.store.get_pending(promotion_id)
        if request.status is not PromotionStatus.PENDING:
            raise RegistryError(
                ErrorCode.CONFLICT,
                f"promotion request {request.id} was {request.status.value} already by "
                f"{request.decided_by}",
                param="promotion_id",
            )
        if request.requested_by == self.actor:
            raise RegistryError(
                ErrorCode.PERMISSION_DENIED,
                f"promotion request {request.id} was made by {self.actor}; a second person "
                "must approve or reject it",
                param="promotion_id",
            )
        return request

    def rollback(
        self, name: str, alias: str, *, reason: str = "", break_glass: str = ""
    ) -> AliasEvent:
        """Move `alias` back to the version it pointed at before its last move (a two-person
        alias needs a `break_glass` reason)."""
        validate_name(name)
        validate_alias(alias)
        glass = self._break_glass(name, alias, break_glass)

        def attempt() -> AliasEvent:
            events = self.store.alias_events(name, alias)
            last = events[-1] if events else None
            if last is None or last.to_version is None or last.from_version is None:
                raise RegistryError(
                    ErrorCode.CONFLICT,
                    f"{name}@{alias} has no previous version to roll back to; "
                    f"`llm-registry history {name}` shows its moves",
                    param="alias",
                )
            return self.store.move_alias(
                name,
                alias,
                to_version=last.from_version,
                expected_from=last.to_version,
                action=AliasAction.ROLLBACK,
                actor=self.actor,
                reason=reason,
                break_glass_reason=glass,
            )

        return self._retry(attempt)

    def history(
        self,
        name: str,
        alias: str | None = None,
        *,
        limit: int | None = None,
        after: int | None = None,
    ) -> list[AliasEvent]:
        return self.store.alias_events(
            validate_name(name),
            validate_alias(alias) if alias else None,
            limit=limit,
            after=after,
        )

    def _current(self, name: str, alias: str) -> int | None:
        found = self.store.get_alias(name, alias)
        return found.version if found else None

    def _alias_target(self, name: str, alias: str) -> int:
        if (version := self._current(name, alias)) is None:
            raise RegistryError(
                ErrorCode.NOT_FOUND,
                f"model {name!r} has no alias {alias!r}; `llm-registry alias list {name}` lists "
                "its aliases",
                param="model",
            )
        return version

    @staticmethod
    def _retry(change: Callable[[], T]) -> T:
        """Run an alias change again when another writer moved the alias in between."""
        for _ in range(_ALIAS_RETRIES - 1):
            try:
                return change()
            except AliasMovedError:
                continue
        return change()


def _choice(enum: type[E], value: E | str, param: str) -> E:
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(e.value for e in enum)
        raise RegistryError(
            ErrorCode.INVALID, f"unknown {param} {value!r}; use one of {choices}", param=param
        ) from None


def open_registry(
    stack: StackSettings | None = None, settings: RegistrySettings | None = None
) -> Registry:
    """The registry of the stack configured by `stack` and `settings` (by default, from the
    environment)."""
    stack = stack or StackSettings()
    settings = settings or RegistrySettings()
    home = stack.ensure_home()
    return Registry(
        SqlStore(open_database(stack.resolved_database_url, CHAIN)),
        ArtifactStore(home),
        load_gate(settings.promotion_gate),
        stack.actor,
        stack.models_cache,
        Path(settings.import_root).expanduser() if settings.import_root else None,
        remote_code_models=frozenset(settings.trust_remote_code),
        max_unpacked_bytes=settings.unpacked_limit,
        two_person_aliases=frozenset(settings.two_person_aliases),
    )
