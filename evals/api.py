"""OpenAI's Evals API over the stack's suites, which the gateway mounts:

    GET  /v1/evals                               GET /v1/evals/{eval_id}   (suites, read only)
    POST /v1/evals/{eval_id}/runs                GET /v1/evals/{eval_id}/runs
    GET  /v1/evals/{eval_id}/runs/{run_id}       POST /v1/evals/{eval_id}/runs/{run_id} (cancel;
                                                 also .../cancel, as openai-python sends it)
    GET  /v1/evals/{eval_id}/runs/{run_id}/output_items[/{output_item_id}]

Evals are not created over HTTP (`POST /v1/evals` is no route: 405): an eval is a suite, a YAML
file in the gateway's suites folder, and an unknown eval's 404 says so.
Runs are not deleted over HTTP: the eval gate's audit events name them. The `EvalHandlers` on
the application (`app.state.evaluations`) do the work; see `evals.protocol` for the shapes."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from core.callers import Caller, current_caller
from core.http import error_responses
from core.listing import MAX_PAGE, ListPage
from evals.catalog import EVAL_ID_PATTERN
from evals.handlers import EvalHandlers
from evals.protocol import EvalObject, EvalRunObject, OutputItemObject, RunRequest, RunStatusName

router = APIRouter(prefix="/v1", tags=["evals"], responses=error_responses(400, 401, 403, 404))


def get_handlers(request: Request) -> EvalHandlers:
    return request.app.state.evaluations


Handlers = Annotated[EvalHandlers, Depends(get_handlers)]
Who = Annotated[Caller, Depends(current_caller)]
EvalId = Annotated[str, Path(pattern=EVAL_ID_PATTERN, description="A suite's file name.")]
RunId = Annotated[str, Path(max_length=64)]
ItemId = Annotated[str, Path(max_length=64)]
After = Annotated[str | None, Query(max_length=64)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Order = Annotated[Literal["asc", "desc"], Query()]


@router.get("/evals")
def list_evals(
    handlers: Handlers,
    who: Who,
    after: Annotated[str | None, Query(pattern=EVAL_ID_PATTERN)] = None,
    limit: Limit = 20,
    order: Order = "asc",
    order_by: Annotated[
        Literal["created_at", "updated_at"], Query(description="Both: the file's time.")
    ] = "created_at",
) -> ListPage[EvalObject]:
    return handlers.list_evals(who, after=after, limit=limit, order=order)


@router.get("/evals/{eval_id}")
def get_eval(handlers: Handlers, who: Who, eval_id: EvalId) -> EvalObject:
    return handlers.get_eval(who, eval_id)


@router.post("/evals/{eval_id}/runs", responses=error_responses(429, 503))
def create_run(handlers: Handlers, who: Who, eval_id: EvalId, body: RunRequest) -> EvalRunObject:
    return handlers.create_run(who, eval_id, body)


@router.get("/evals/{eval_id}/runs")
def list_runs(
    handlers: Handlers,
    who: Who,
    eval_id: EvalId,
    after: After = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Annotated[RunStatusName | None, Query()] = None,
) -> ListPage[EvalRunObject]:
    return handlers.list_runs(who, eval_id, after=after, limit=limit, order=order, status=status)


@router.get("/evals/{eval_id}/runs/{run_id}")
def get_run(handlers: Handlers, who: Who, eval_id: EvalId, run_id: RunId) -> EvalRunObject:
    return handlers.get_run(who, eval_id, run_id)


@router.post("/evals/{eval_id}/runs/{run_id}")
def cancel_run(handlers: Handlers, who: Who, eval_id: EvalId, run_id: RunId) -> EvalRunObject:
    return handlers.cancel_run(who, eval_id, run_id)


@router.post("/evals/{eval_id}/runs/{run_id}/cancel")
def cancel_run_by_name(
    handlers: Handlers, who: Who, eval_id: EvalId, run_id: RunId
) -> EvalRunObject:
    return handlers.cancel_run(who, eval_id, run_id)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items", responses=error_responses(500))
def list_output_items(
    handlers: Handlers,
    who: Who,
    eval_id: EvalId,
    run_id: RunId,
    after: After = None,
    limit: Limit = 20,
    order: Order = "asc",
    status: Annotated[Literal["pass", "fail"] | None, Query()] = None,
) -> ListPage[OutputItemObject]:
    return handlers.list_output_items(
        who, eval_id, run_id, after=after, limit=limit, order=order, status=status
    )


@router.get(
    "/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}",
    responses=error_responses(500),
)
def get_output_item(
    handlers: Handlers, who: Who, eval_id: EvalId, run_id: RunId, output_item_id: ItemId
) -> OutputItemObject:
    return handlers.get_output_item(who, eval_id, run_id, output_item_id)
