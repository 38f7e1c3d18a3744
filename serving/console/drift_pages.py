"""The console's drift page, for admins: a model's drift checks over time (the monitor's
scores and alarms) beside the continuous-training loop's timeline, each step linked to what
it made (check, eval run, job, version, alias move). Both are read from the evaluation
tables, through their stores."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse

from core.refs import NAME_PATTERN
from evals.continuous.events import LoopEvent, LoopEvents, Step
from evals.continuous.timeline import label
from evals.drift.checks import DriftStore
from serving.console import charts
from serving.console.evals_pages import evaluations
from serving.console.pages import ConsoleRoute, render
from serving.console.session import Session, current_session

router = APIRouter(prefix="/ui/models", route_class=ConsoleRoute, include_in_schema=False)
CHECKS_SHOWN = 200
EVENTS_SHOWN = 500


def admin_session(session: Annotated[Session, Depends(current_session)]) -> Session:
    session.require_admin()
    return session


def _link(name: str, event: LoopEvent) -> str | None:
    """Where a loop step's `ref` is shown in the console."""
    if event.ref is None:
        return None
    match event.step:
        case Step.DRIFT:
            return f"#{event.ref}"
        case Step.EVALUATION:
            return f"/ui/runs/{event.ref}"
        case Step.JOB:
            return f"/ui/jobs/{event.ref}"
        case Step.VERSION:
            return f"/ui/models/{name}/versions/{event.ref.rpartition(':')[2]}"
        case Step.GATE | Step.PROMOTED:
            return f"/ui/models/{name}#history"
    return None


@router.get("/{name}/drift")
def drift_page(
    request: Request,
    session: Annotated[Session, Depends(admin_session)],
    name: Annotated[str, PathParam(pattern=NAME_PATTERN)],
) -> HTMLResponse:
    registry = request.app.state.gateway.registry
    model = registry.store.get_model(name)
    engine = evaluations(request).runs.engine
    checks = DriftStore(engine).history(name, limit=CHECKS_SHOWN)
    events = LoopEvents(engine).history(name, limit=EVENTS_SHOWN)
    cycles: dict[str, list[tuple[LoopEvent, str, str | None]]] = {}
    for event in events:
        cycles.setdefault(event.cycle, []).append((event, label(event), _link(name, event)))
    scores = [(c.created_at.strftime("%m-%d %H:%M"), c.score) for c in checks]
    return render(
        request,
        "drift.html",
        session,
        model=model,
        checks=list(reversed(checks)),
        cycles=list(reversed(cycles.items())),
        chart=charts.line("drift score", scores, noun="drift check"),
    )
