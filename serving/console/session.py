"""Who uses the console: logging in with an API key starts a session, a random token in an
HTTP-only, same-site cookie whose hash the database keeps with the key and an expiry (the
API key itself never goes into the cookie). Every request checks the session and its key
(so logging out, the expiry or a revoked key ends it at once, on every gateway replica), and
every form carries a CSRF token.

The CSRF token is an HMAC of a fixed label under the session's token: a page of another site
can neither read the cookie nor compute it. The login form, made before any session exists,
uses a random double-submit cookie."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy import Engine, delete, select

from core.callers import Caller
from core.database import as_utc, reading, utc_now
from serving.auth import Authenticator
from serving.console.errors import ConsoleError
from serving.keys import ApiKey, secret_hash
from serving.tables import console_sessions

SESSION_COOKIE = "llmops_console"
LOGIN_CSRF_COOKIE = "llmops_console_login"
CSRF_HEADER = "x-csrf-token"
COOKIE_PATH = "/ui"
_CSRF_LABEL = b"llmops console csrf v1"
MAX_SECRET = 200  # longer than any key the key store makes
SESSION_TTL = timedelta(hours=12)
MAX_SESSIONS_PER_KEY = 16  # a new login ends the key's oldest session beyond these


class ConsoleSessions:
    """Sessions in the stack's database, by the sha256 of their token."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def start(self, key: ApiKey) -> str:
        """A new session of `key`; returns its token. Expired sessions, and the key's oldest
        beyond MAX_SESSIONS_PER_KEY, are removed."""
        token = secrets.token_urlsafe(32)
        now = utc_now()
        oldest = (
            select(console_sessions.c.token_hash)
            .where(console_sessions.c.key_id == key.id)
            .order_by(console_sessions.c.created_at.desc())
            .offset(MAX_SESSIONS_PER_KEY - 1)
        )
        with self.engine.begin() as conn:
            conn.execute(delete(console_sessions).where(console_sessions.c.expires_at <= now))
            conn.execute(delete(console_sessions).where(console_sessions.c.token_hash.in_(oldest)))
            conn.execute(
                console_sessions.insert().values(
                    token_hash=secret_hash(token),
                    key_id=key.id,
                    created_at=now,
                    expires_at=now + SESSION_TTL,
                )
            )
        return token

    def key_id(self, token: str) -> str | None:
        """The key of the unexpired session with `token`, if there is one."""
        stmt = select(console_sessions).where(console_sessions.c.token_hash == secret_hash(token))
        with reading(self.engine) as conn:
            row = conn.execute(stmt).first()
        if row is None or as_utc(row.expires_at) <= utc_now():
            return None
        return row.key_id

    def end(self, token: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                delete(console_sessions).where(console_sessions.c.token_hash == secret_hash(token))
            )


def sessions_of(request: Request) -> ConsoleSessions:
    return ConsoleSessions(request.app.state.gateway.keys.engine)


@dataclass(frozen=True)
class Session:
    key: ApiKey
    token: str

    @property
    def csrf_token(self) -> str:
        return hmac.new(self.token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()

    @property
    def caller(self) -> Caller:
        return Authenticator.caller_of(self.key)

    def check_csrf(self, given: str) -> None:
        """Refuse a form whose CSRF token is missing or not this session's."""
        if not given or not same_token(given, self.csrf_token):
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


def same_token(given: str, expected: str) -> bool:
    """Whether a form's token is the expected one, in constant time; as bytes, since
    `compare_digest` raises on text that is not ASCII, which anyone may send."""
    return hmac.compare_digest(given.encode(), expected.encode())


def current_session(request: Request) -> Session:
    """The session of the request's cookie; 401 (a page that links to the login) without a
    cookie, or for a session that ended or expired or whose key was revoked."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token:
        raise ConsoleError(401, "Log in with an API key to use the console.", title="Log in")
    key_id = sessions_of(request).key_id(token[:MAX_SECRET])
    key = request.app.state.gateway.keys.active(key_id) if key_id else None
    if key is None:
        raise ConsoleError(
            401,
            "This session is not valid (logged out, expired after "
            f"{SESSION_TTL.total_seconds() / 3600:g} hours, or its API key was revoked); log "
            "in again with a valid key.",
            title="Session refused",
        )
    return Session(key, token)


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def set_login_token(response: Response, token: str, secure: bool) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path=COOKIE_PATH, secure=secure
    )


def check_login_token(request: Request, given: str) -> None:
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not same_token(given, expected):
        raise ConsoleError(
            403,
            "The login form has no valid CSRF token; reload the login page and try again.",
            title="Form refused",
        )


def start_session(request: Request, response: Response, key: ApiKey, secure: bool) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        sessions_of(request).start(key),
        max_age=int(SESSION_TTL.total_seconds()),
        httponly=True,
        samesite="strict",
        path=COOKIE_PATH,
        secure=secure,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)


def end_session(request: Request, session: Session, response: Response) -> None:
    sessions_of(request).end(session.token)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
