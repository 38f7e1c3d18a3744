"""Model references, the one parser of the strings that name a model version:

name                       the version its `production` alias points at
name@alias                 the version an alias points at
name:version               one version (a positive integer without leading zeros)
ft:<base>:<suffix>:<job>   the adapter a fine-tuning job registered (OpenAI's naming)
"""

import re
from dataclasses import dataclass

from core.errors import ErrorCode, StackError

DEFAULT_ALIAS = "production"
FINE_TUNED_PREFIX = "ft:"
MAX_NAME_LENGTH = 128
MAX_ALIAS_LENGTH = 64
_NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_ALIAS_RE = r"[a-z][a-z0-9_-]{0,63}"
_VERSION_RE = r"[1-9][0-9]{0,8}"  # fits the 32-bit columns
_SUFFIX_RE = r"[a-z0-9][a-z0-9_-]{0,39}"
_JOB_RE = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
# The same rules as patterns for OpenAPI documents (each matches a whole value).
NAME_PATTERN = f"^{_NAME_RE}$"
ALIAS_PATTERN = f"^{_ALIAS_RE}$"
VERSION_REF_PATTERN = f"^{_NAME_RE}:{_VERSION_RE}$"
REF_PATTERN = (
    f"^(?:ft:{_NAME_RE}:(?:{_SUFFIX_RE})?:{_JOB_RE}|{_NAME_RE}(?::{_VERSION_RE}|@{_ALIAS_RE})?)$"
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS = re.compile(r"[a-z][a-z0-9_-]*")
_VERSION = re.compile(_VERSION_RE)
_SUFFIX = re.compile(f"(?:{_SUFFIX_RE})?")
_JOB = re.compile(_JOB_RE)


def _invalid(message: str, param: str) -> StackError:
    return StackError(ErrorCode.INVALID, message, param=param)


def validate_name(name: str, param: str = "name") -> str:
    """Return `name` if it is a valid model name, else raise INVALID."""
    if not name:
        raise _invalid("model name is empty", param)
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(
            f"model name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}", param
        )
    if not _NAME.fullmatch(name):
        raise _invalid(
            f"invalid model name {name!r}: use letters, digits, '.', '_' and '-', starting "
            "with a letter or digit",
            param,
        )
    return name


def validate_alias(alias: str, param: str = "alias") -> str:
    """Return `alias` if it is a valid alias name, else raise INVALID."""
    if not alias or len(alias) > MAX_ALIAS_LENGTH or not _ALIAS.fullmatch(alias):
        raise _invalid(
            f"invalid alias {alias!r}: use up to {MAX_ALIAS_LENGTH} lowercase letters, digits, "
            "'_' and '-', starting with a letter (for example 'staging')",
            param,
        )
    return alias


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: exactly one of `version`, `alias` and `fine_tuned` is set.

    `name` is the registry model the reference names; for a fine-tuned name it is the base
    model the adapter was trained on, which is what API keys are allowed by."""

    name: str
    version: int | None = None
    alias: str | None = None
    fine_tuned: str | None = None

    def __str__(self) -> str:
        if self.fine_tuned is not None:
            return self.fine_tuned
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}"


def fine_tuned_name(base: str, suffix: str | None, job_id: str) -> str:
    """OpenAI's naming of a fine-tuned model, `ft:<base>:<suffix>:<job-id>`."""
    return f"{FINE_TUNED_PREFIX}{base}:{suffix or ''}:{job_id}"


def parse_ref(ref: str, param: str = "model") -> ModelRef:
    """Parse a reference (see the module's docstring); INVALID says what is wrong."""
    if ref.startswith(FINE_TUNED_PREFIX) and ref.count(":") >= 3:
        parts = ref.split(":")
        if len(parts) != 4 or not _SUFFIX.fullmatch(parts[2]) or not _JOB.fullmatch(parts[3]):
            raise _invalid(
                f"invalid fine-tuned model name {ref!r}: it has the form "
                "'ft:<base>:<suffix>:<job-id>' (for example 'ft:demo:rev:ftjob-abc123')",
                param,
            )
        return ModelRef(validate_name(parts[1], param), fine_tuned=ref)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return ModelRef(validate_name(name, param), alias=validate_alias(alias, param))
    if ":" in ref:
        name, version = ref.split(":", 1)
        if not _VERSION.fullmatch(version):
            raise _invalid(
                f"invalid reference {ref!r}: the version after ':' must be a positive integer "
                "below 10^9, without leading zeros (for example 'demo:2')",
                param,
            )
        return ModelRef(validate_name(name, param), version=int(version))
    return ModelRef(validate_name(ref, param), alias=DEFAULT_ALIAS)
