"""The console's evaluation pages, for admins: a run's metrics with their intervals and its
per-example outputs, and the runs shown beside a model's versions, read through the gateway's
evaluations (`gateway.evaluations`)."""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse

from evals.compare import Comparison
from evals.runs import EvalRun, RunStatus
from evals.service import Evaluations
from registry.entities import ModelVersion
from serving.console.pages import ConsoleRoute, render
from serving.console.session import Session, current_session

router = APIRouter(prefix="/ui/runs", route_class=ConsoleRoute, include_in_schema=False)
EXAMPLES_PAGE = 100
RUNS_PER_VERSION = 10
CHANGED_SHOWN = 50


def admin_session(session: Annotated[Session, Depends(current_session)]) -> Session:
    session.require_admin()
    return session


def evaluations(request: Request) -> Evaluations:
    return request.app.state.gateway.evaluations.evaluations


def runs_of(evals: Evaluations, versions: list[ModelVersion]) -> list[EvalRun]:
    """The newest runs of each version, newest first."""
    found = [run for v in versions for run in evals.runs.list_runs(RUNS_PER_VERSION, version=v.ref)]
    return sorted(found, key=lambda r: r.created_at, reverse=True)


@dataclass(frozen=True)
class SuiteComparison:
    suite: str
    runs: list[EvalRun | None]  # the newest succeeded run of each compared version
    metrics: list[str]
    comparison: Comparison | None  # of the first two versions that have a run
    changed: list[dict[str, Any]]


def compare_suites(evals: Evaluations, versions: list[ModelVersion]) -> list[SuiteComparison]:
    """For every suite some compared version ran: each version's newest succeeded run, and
    the paired deltas and changed examples of the first two such runs."""
    newest: dict[str, dict[str, EvalRun]] = {}
    for run in runs_of(evals, versions):
        if run.status is RunStatus.SUCCEEDED and run.version is not None:
            newest.setdefault(run.suite, {}).setdefault(run.version, run)
    suites = []
    for suite, by_version in sorted(newest.items()):
        row = [by_version.get(v.ref) for v in versions]
        present = [r for r in row if r is not None]
        same = len(present) >= 2 and present[0].suite_digest == present[1].suite_digest
        comparison = evals.compare(present[0].id, present[1].id) if same else None
        metrics = sorted({m for r in present for m in r.metrics})
        changed = comparison.changed[:CHANGED_SHOWN] if comparison else []
        suites.append(SuiteComparison(suite, row, metrics, comparison, changed))
    return suites


@router.get("/{run_id}")
def run_page(
    request: Request,
    session: Annotated[Session, Depends(admin_session)],
    run_id: Annotated[str, PathParam(pattern="^[A-Za-z0-9_-]{1,64}$")],
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> HTMLResponse:
    evals = evaluations(request)
    run = evals.runs.get(run_id)
    examples = evals.runs.examples(run) if run.status is RunStatus.SUCCEEDED else []
    pages = max((len(examples) + EXAMPLES_PAGE - 1) // EXAMPLES_PAGE, 1)
    page = min(page, pages)
    shown = examples[(page - 1) * EXAMPLES_PAGE : page * EXAMPLES_PAGE]
    return render(
        request,
        "run.html",
        session,
        run=run,
        examples=shown,
        total=len(examples),
        page=page,
        pages=pages,
    )
