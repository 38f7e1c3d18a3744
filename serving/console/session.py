"""Who uses the console: the API key entered on the login page, kept in an HTTP-only,
same-site cookie and checked against the key store on every request (so a revoked key ends
the session at once), and the CSRF token every form carries.

The token is an HMAC of a fixed label under the key itself: a page of another site can
neither read the cookie nor compute the token, and every gateway replica derives the same
one. The login form, made before any key is known, uses a random double-submit cookie."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from core.callers import Caller
from serving.auth import Authenticator
from serving.console.errors import ConsoleError
from serving.keys import ApiKey

SESSION_COOKIE = "llmops_console"
LOGIN_CSRF_COOKIE = "llmops_console_login"
CSRF_HEADER = "x-csrf-token"
COOKIE_PATH = "/ui"
_CSRF_LABEL = b"llmops console csrf v1"
MAX_SECRET = 200  # longer than any key the key store makes


@dataclass(frozen=True)
class Session:
    key: ApiKey
    csrf_token: str

    @property
    def caller(self) -> Caller:
        return Authenticator.caller_of(self.key)

    def check_csrf(self, given: str) -> None:
        """Refuse a form whose CSRF token is missing or not this session's."""
        if not given or not hmac.compare_digest(given, self.csrf_token):
            raise ConsoleError(
                403,
                "This form has no valid CSRF token, so nothing was changed. Reload the page "
                "and submit the form again.",
                title="Form refused",
            )

    def require_admin(self) -> None:
        if not self.key.admin:
            raise ConsoleError(
                403,
                f"Key {self.key.name!r} has no admin scope; this page needs an admin key "
                "(`llm-serve keys create NAME --admin`).",
                title="Admin key needed",
            )


def csrf_token(secret: str) -> str:
    return hmac.new(secret.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def current_session(request: Request) -> Session:
    """The session of the request's cookie; 401 (a page that links to the login) without a
    cookie or with a key that is unknown or revoked."""
    secret = request.cookies.get(SESSION_COOKIE, "")
    if not secret:
        raise ConsoleError(401, "Log in with an API key to use the console.", title="Log in")
    key = request.app.state.gateway.keys.authenticate(secret[:MAX_SECRET])
    if key is None:
        raise ConsoleError(
            401,
            "The API key of this session is not valid (unknown or revoked); log in again with "
            "a valid key.",
            title="Session refused",
        )
    return Session(key, csrf_token(secret))


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def set_login_token(response: Response, token: str, secure: bool) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path=COOKIE_PATH, secure=secure
    )


def check_login_token(request: Request, given: str) -> None:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(given, expected):
        raise ConsoleError(
            403,
            "The login form has no valid CSRF token; reload the login page and try again.",
            title="Form refused",
        )


def start_session(response: Response, secret: str, secure: bool) -> None:
    response.set_cookie(
        SESSION_COOKIE, secret, httponly=True, samesite="strict", path=COOKIE_PATH, secure=secure
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
