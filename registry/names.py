"""Validation of model and alias names, and parsing of model references.

A reference is `name` (its `production` alias), `name:version` or `name@alias`.
"""

import re
from dataclasses import dataclass

from registry.errors import ErrorCode, RegistryError

DEFAULT_ALIAS = "production"
# Fine-tuned adapters are also found by the name their job gave them, `ft:<base>:<suffix>:<job>`,
# kept in this tag of the version.
FINE_TUNED_PREFIX = "ft:"
FINE_TUNED_TAG = "fine_tuned_model"
MAX_NAME_LENGTH = 128
MAX_ALIAS_LENGTH = 64

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]*")


def validate_name(name: str) -> str:
    """Return `name` if it is a valid model name, else raise INVALID."""
    if not name:
        raise RegistryError(ErrorCode.INVALID, "model name is empty", param="name")
    if len(name) > MAX_NAME_LENGTH:
        raise RegistryError(
            ErrorCode.INVALID,
            f"model name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}",
            param="name",
        )
    if not _NAME.fullmatch(name) or ".." in name:
        raise RegistryError(
            ErrorCode.INVALID,
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', starting "
            "with a letter or digit, and no '..'",
            param="name",
        )
    return name


def validate_alias(alias: str) -> str:
    """Return `alias` if it is a valid alias name, else raise INVALID."""
    if not alias or len(alias) > MAX_ALIAS_LENGTH or not _ALIAS.fullmatch(alias):
        raise RegistryError(
            ErrorCode.INVALID,
            f"invalid alias {alias!r}: use up to {MAX_ALIAS_LENGTH} lowercase letters, digits, "
            "'_' and '-', starting with a letter (for example 'staging')",
            param="alias",
        )
    return alias


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: exactly one of `version` and `alias` is set."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}"


def parse_ref(ref: str) -> ModelRef:
    """Parse `name`, `name:version` or `name@alias`; a bare name means `name@production`."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return ModelRef(validate_name(name), alias=validate_alias(alias))
    if ":" in ref:
        name, version = ref.split(":", 1)
        if not version.isdigit() or int(version) < 1:
            raise RegistryError(
                ErrorCode.INVALID,
                f"invalid reference {ref!r}: the version after ':' must be a positive integer "
                "(for example 'demo:2')",
                param="model",
            )
        return ModelRef(validate_name(name), version=int(version))
    return ModelRef(validate_name(ref), alias=DEFAULT_ALIAS)
