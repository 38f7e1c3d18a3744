"""The model ids the gateway serves, as `/v1/models` lists them: each model's aliases
(`name@alias`, and the bare name for `production`) and the `ft:` names of fine-tuned
adapters, with `parent` set to the base version for adapters; a caller sees only the versions
that are an operator's or its own key's."""

from core.callers import Caller
from core.refs import DEFAULT_ALIAS
from registry.entities import FINE_TUNED_TAG, ModelVersion, VersionKind
from registry.service import Registry
from serving.protocol import ModelCard


def _card(model_id: str, version: ModelVersion) -> ModelCard:
    parent = version.parent if version.kind is VersionKind.ADAPTER else None
    created = int(version.created_at.timestamp())
    return ModelCard(id=model_id, created=created, parent=parent, root=version.ref)


def served_bases(registry: Registry) -> set[str]:
    """The base versions (refs) that aliases serve, directly or under an adapter."""
    return {
        registry.base_of(registry.store.get_version(a.name, a.version)).ref
        for a in registry.aliases()
    }


def model_cards(registry: Registry, caller: Caller) -> list[ModelCard]:
    cards = []
    for alias in registry.aliases():
        version = registry.store.get_version(alias.name, alias.version)
        if not caller.sees_model(version.owner):
            continue
        if alias.alias == DEFAULT_ALIAS:
            cards.append(_card(alias.name, version))
        cards.append(_card(f"{alias.name}@{alias.alias}", version))
    for version in registry.list_versions(tags={FINE_TUNED_TAG: None}):
        if caller.sees_model(version.owner):
            cards.append(_card(version.tags[FINE_TUNED_TAG], version))
    return cards
