"""The console's API-key pages, for admins: list, create (the secret is shown once, on the
page that answers the form) and revoke, through the gateway's key store. Creating an admin
key asks for the session's own API key again, so that a session left open (or a stolen
cookie) cannot mint admin keys."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from serving.console.errors import ConsoleError
from serving.console.pages import ConsoleRoute, render
from serving.console.session import MAX_SECRET, Session, current_session
from serving.keys import ALL_MODELS, KEY_ID_PATTERN, KeyStore

router = APIRouter(prefix="/ui/keys", route_class=ConsoleRoute, include_in_schema=False)
Csrf = Annotated[str, Form(max_length=128)]


def admin_session(session: Annotated[Session, Depends(current_session)]) -> Session:
    session.require_admin()
    return session


AdminDep = Annotated[Session, Depends(admin_session)]


def _keys(request: Request) -> KeyStore:
    return request.app.state.gateway.keys


def _page(request: Request, session: Session, **context: object) -> HTMLResponse:
    keys = _keys(request).list_keys(include_revoked=True)
    return render(request, "keys.html", session, keys=keys, **context)


@router.get("")
def keys_page(request: Request, session: AdminDep) -> HTMLResponse:
    return _page(request, session)


@router.post("")
def create_key(
    request: Request,
    session: AdminDep,
    name: Annotated[str, Form(min_length=1, max_length=128)],
    models: Annotated[str, Form(max_length=2000)] = ALL_MODELS,
    admin: Annotated[bool, Form()] = False,
    current_key: Annotated[str, Form(max_length=MAX_SECRET)] = "",
    csrf_token: Csrf = "",
) -> HTMLResponse:
    session.check_csrf(csrf_token)
    if admin:
        given = current_key.strip()
        confirmed = _keys(request).authenticate(given)
        if confirmed is None or confirmed.id != session.key.id:
            raise ConsoleError(
                403,
                "Creating an admin key needs the API key you logged in with "
                f"({session.key.name!r}) entered again; "
                f"{'the key given is not it' if given else 'none was given'}, so no key was "
                "created.",
                title="Confirm with your API key",
            )
    allowed = tuple(m for m in models.replace(",", " ").split() if m) or (ALL_MODELS,)
    key, secret = _keys(request).create(
        name.strip(), models=allowed, admin=admin, maker=session.caller
    )
    return _page(request, session, created=key, secret=secret)


@router.post("/{key_id}/revoke")
def revoke_key(
    request: Request,
    session: AdminDep,
    key_id: Annotated[str, PathParam(pattern=f"^{KEY_ID_PATTERN}$")],
    csrf_token: Csrf = "",
) -> Response:
    session.check_csrf(csrf_token)
    _keys(request).revoke(key_id)
    return RedirectResponse("/ui/keys", status_code=303)
