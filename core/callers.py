"""Who makes an HTTP request. The gateway, as the composition root, authenticates requests
and puts its authenticator on the application (`app.state.authenticate`); every package's
router asks for the caller through the dependencies below, so no router knows about keys."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from fastapi import Request

from core.errors import ErrorCode, StackError


def _any_model(_model: str) -> bool:
    return True


@dataclass(frozen=True)
class Caller:
    """The API key behind a request (None on a gateway without keys), whether it is an admin
    (admins see every key's resources), its name, and which models it may use."""

    key_id: str | None
    admin: bool
    name: str = "anonymous"
    may_use: Callable[[str], bool] = _any_model
    teach: bool = False  # whether its corrections (`/v1/feedback`) may train models
    # who made the key, and who made the keys that made it: (maker's actor, when), the key's
    # own maker last; empty where it is not known
    made_by: tuple[tuple[str, datetime], ...] = ()

    @property
    def actor(self) -> str:
        """Who the audit log records for a change this caller makes."""
        return f"key {self.key_id} ({self.name})" if self.key_id else self.name

    def sees(self, owner: str | None) -> bool:
        """Whether this caller may see a resource the key `owner` made."""
        return self.admin or owner == self.key_id

    def sees_model(self, owner: str | None) -> bool:
        """Whether this caller may see (list, use, fine-tune) a model version owned by
        `owner`; a version no key owns is an operator's, which every caller may use."""
        return owner is None or self.sees(owner)

    @property
    def owner_filter(self) -> str | None:
        """The owner to list resources of: None (everyone's) for admins."""
        return None if self.admin else self.key_id


def current_caller(request: Request) -> Caller:
    """The caller of `request`, as the application's authenticator says (it raises the
    HTTP error when authentication fails)."""
    return request.app.state.authenticate(request)


def admin_caller(request: Request) -> Caller:
    """The caller, who must be an admin (403 otherwise)."""
    caller = current_caller(request)
    if caller.admin:
        return caller
    if caller.key_id is None:
        raise StackError(
            ErrorCode.PERMISSION_DENIED,
            "no API key exists, so admin routes are closed over HTTP: create an admin key "
            "with `llm-serve keys create NAME --admin` and send it as a bearer token",
            api_code="insufficient_permissions",
        )
    raise StackError(
        ErrorCode.PERMISSION_DENIED,
        f"key {caller.name!r} has no admin scope; this route needs an admin key "
        "(`llm-serve keys create NAME --admin`)",
        api_code="insufficient_permissions",
    )
