"""Live traffic for admins: how many requests each model version answered in the last
minutes and hours, from the gateway's traffic log (every replica's), refreshed in place."""

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from core.database import utc_now
from serving.console.pages import ConsoleRoute, render
from serving.console.session import Session, current_session

router = APIRouter(prefix="/ui/traffic", route_class=ConsoleRoute, include_in_schema=False)
WINDOWS = (
    ("5 minutes", timedelta(minutes=5)),
    ("1 hour", timedelta(hours=1)),
    ("24 hours", timedelta(days=1)),
)


def admin_session(session: Annotated[Session, Depends(current_session)]) -> Session:
    session.require_admin()
    return session


@router.get("")
def traffic_page(
    request: Request, session: Annotated[Session, Depends(admin_session)]
) -> HTMLResponse:
    log = request.app.state.gateway.traffic
    now = utc_now()
    counts = [log.counts(now - span) for _, span in WINDOWS] if log is not None else []
    versions = sorted({v for window in counts for v in window})
    template = "_traffic.html" if request.headers.get("hx-request") else "traffic.html"
    return render(
        request,
        template,
        session,
        enabled=log is not None,
        windows=[label for label, _ in WINDOWS],
        rows=[(v, [window.get(v, 0) for window in counts]) for v in versions],
        now=now,
    )
