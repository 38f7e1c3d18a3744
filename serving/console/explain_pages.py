"""The console's explain page: run an explanation of a prompt on a chosen version through the
gateway's explanation service (the same limits, key permissions and token charges as
`POST /v1/explanations`) and show its heat map."""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from evals.explain.heatmap import heat_colour, heat_grid
from evals.explain.protocol import METHODS, ExplanationRequest
from serving.console.errors import ConsoleError
from serving.console.pages import ConsoleRoute, render
from serving.console.session import Session, current_session

router = APIRouter(prefix="/ui/explain", route_class=ConsoleRoute, include_in_schema=False)
SessionDep = Annotated[Session, Depends(current_session)]


def _ink(value: float, scale: float) -> str:
    """White on deep blue, dark text elsewhere: legible on every cell (WCAG AA)."""
    return "#fff" if value < 0 and scale and -value / scale > 0.5 else "#1a1a1a"


@router.get("")
def explain_page(request: Request, session: SessionDep, model: str = "") -> HTMLResponse:
    return render(request, "explain.html", session, methods=METHODS, form={"model": model[:256]})


@router.post("")
async def explain(
    request: Request,
    session: SessionDep,
    model: Annotated[str, Form(max_length=256)],
    prompt: Annotated[str, Form(max_length=4000)],
    method: Annotated[str, Form(max_length=32)] = "feature_ablation",
    target: Annotated[str, Form(max_length=4000)] = "",
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> HTMLResponse:
    session.check_csrf(csrf_token)
    form = {"model": model, "prompt": prompt, "method": method, "target": target}
    try:
        body = ExplanationRequest(model=model, prompt=prompt, method=method, target=target or None)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "input"
        raise ConsoleError(400, f"{where}: {first['msg']}", title="Bad input") from None
    service = request.app.state.gateway.explanations
    explanation = await service.explain(body, session.caller, request.is_disconnected)
    labels, rows = heat_grid(explanation)
    scale = max((abs(v) for row in rows for v in row), default=0.0)
    heat = [
        (label, [(v, heat_colour(v, scale), _ink(v, scale)) for v in row])
        for label, row in zip(labels, rows, strict=True)
    ]
    return render(
        request,
        "explain.html",
        session,
        methods=METHODS,
        form=form,
        explanation=explanation,
        heat=heat,
    )
