"""Shell completion of model references: registered names, then `name:N` and `name@alias`
once a name is typed out. Completion runs on every Tab press, so it never fails: any error
(no database yet, a schema being migrated) completes nothing."""

import logging
from collections.abc import Callable
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from core.settings import StackSettings
from registry.service import Registry, open_registry

log = logging.getLogger(__name__)
MAX_NAMES = 1000


def model_refs(registry: Registry, incomplete: str) -> list[str]:
    """The references that start with `incomplete`."""
    name, sep, _ = incomplete.partition("@") if "@" in incomplete else incomplete.partition(":")
    if sep:
        return [r for r in _refs_of(registry, name) if r.startswith(incomplete)]
    names = model_names(registry, name)
    return names + (_refs_of(registry, name) if name in names else [])


def _refs_of(registry: Registry, name: str) -> list[str]:
    aliases = [f"{name}@{a.alias}" for a in registry.aliases(name)]
    return aliases + [f"{name}:{v.version}" for v in registry.list_versions(name, limit=MAX_NAMES)]


def model_names(registry: Registry, incomplete: str) -> list[str]:
    """The registered model names that start with `incomplete`."""
    found = registry.list_models(incomplete or None, limit=MAX_NAMES)
    return [m.name for m in found if m.name.startswith(incomplete)]


def _completer(
    find: Callable[[Registry, str], list[str]],
) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    def complete(
        ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        try:
            stack = StackSettings()
            url = stack.resolved_database_url
            if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
                return []  # nothing registered, and opening the registry would create it
            return [CompletionItem(r) for r in find(open_registry(stack), incomplete)]
        except Exception:  # a failed completion must not print a traceback
            log.debug("completing %r failed", incomplete, exc_info=True)
            return []

    return complete


# click `shell_complete` callbacks for parameters that take a reference, or a model name.
complete_model_ref = _completer(model_refs)
complete_model_name = _completer(model_names)
