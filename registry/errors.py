"""The registry's exception. Codes and their HTTP statuses are the stack's (`core.errors`)."""

from typing import ClassVar

from core.errors import ErrorCode, StackError


class RegistryError(StackError):
    """A registry operation failed; the message says what was wrong and what to do."""

    api_codes: ClassVar[dict[ErrorCode, str]] = {ErrorCode.NOT_FOUND: "model_not_found"}


class AliasMovedError(RegistryError):
    """CONFLICT: an alias moved between reading it and changing it; the change can be retried."""
