"""The console's AutoML pages, for admins (studies have no owning key: they are made from the
command line): the Optuna studies in the stack's database, and a study's trials with its
Pareto front (several objectives) or its best trial and values by trial (one objective)."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse

from finetune.automl.search import STUDY_PATTERN
from serving.console import charts
from serving.console.drift_pages import admin_session
from serving.console.pages import ConsoleRoute, render
from serving.console.session import Session

router = APIRouter(prefix="/ui/automl", route_class=ConsoleRoute, include_in_schema=False)
AdminDep = Annotated[Session, Depends(admin_session)]
StudyName = Annotated[str, PathParam(pattern=STUDY_PATTERN)]


# Optuna loads with the first AutoML page, not with every gateway and command line; the
# handlers are plain functions, so the database is read on a worker thread.
@router.get("")
def studies_page(request: Request, session: AdminDep) -> HTMLResponse:
    from finetune.automl.report import study_views

    studies = study_views(request.app.state.gateway.jobs.stack)
    return render(request, "automl.html", session, studies=studies)


@router.get("/{study}")
def study_page(request: Request, session: AdminDep, study: StudyName) -> HTMLResponse:
    from finetune.automl.report import study_view

    view = study_view(request.app.state.gateway.jobs.stack, study)
    done = [t for t in view.trials if t.state == "complete"]
    if len(view.objectives) > 1:
        x_name, y_name = view.objectives[:2]
        chart = charts.scatter(
            x_name,
            y_name,
            [
                (f"trial {t.number} ({x_name} {t.values[0]:.4g})", *t.values[:2], t.best)
                for t in done
            ],
            noun="complete trial",
        )
    else:
        chart = charts.line(
            view.objectives[0], [(f"#{t.number}", t.values[0]) for t in done], noun="complete trial"
        )
    registered = view.registered.partition(":") if view.registered else None
    return render(
        request, "automl_study.html", session, study=view, chart=chart, registered=registered
    )
