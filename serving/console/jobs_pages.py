"""The console's fine-tuning pages: jobs with their status, events and loss curve, and
cancel, through the fine-tuning service as the session's key (a key sees its own jobs, an
admin every key's, as on `/v1/fine_tuning/jobs`)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from finetune.service import FineTuningService
from serving.console import charts
from serving.console.pages import ConsoleRoute, render
from serving.console.session import Session, current_session

router = APIRouter(prefix="/ui/jobs", route_class=ConsoleRoute, include_in_schema=False)
SessionDep = Annotated[Session, Depends(current_session)]
JobId = Annotated[str, PathParam(pattern="^ftjob-[A-Za-z0-9]{1,64}$")]
JOBS_SHOWN = 100
EVENTS_SHOWN = 1000


def _service(request: Request) -> FineTuningService:
    return request.app.state.gateway.fine_tuning


@router.get("")
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    jobs = _service(request).list_jobs(session.caller, None, JOBS_SHOWN).data
    return render(request, "jobs.html", session, jobs=jobs)


@router.get("/{job_id}")
def job_page(request: Request, session: SessionDep, job_id: JobId) -> HTMLResponse:
    service = _service(request)
    job = service.get_job(session.caller, job_id)
    events = service.list_events(session.caller, job_id, None, EVENTS_SHOWN).data
    losses = [
        (str(e.data["step"]), float(e.data["loss"]))
        for e in reversed(events)
        if e.data and "loss" in e.data and "step" in e.data
    ]
    return render(
        request,
        "job.html",
        session,
        job=job,
        events=events,
        loss=charts.line("training loss", losses, noun="logged loss"),
    )


@router.post("/{job_id}/cancel")
def cancel_job(
    request: Request,
    session: SessionDep,
    job_id: JobId,
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    session.check_csrf(csrf_token)
    _service(request).cancel_job(session.caller, job_id)
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
