"""The console's pages: log in and out, models, versions, compare, aliases and promotions.
Every page reads and changes the registry through its service (`gateway.registry`, acting
as the session's key), so a promotion here passes the same gate as on the CLI."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from core.refs import ALIAS_PATTERN, NAME_PATTERN
from registry.entities import ModelVersion, PromotionStatus
from registry.errors import RegistryError
from registry.protocol import MAX_REASON
from registry.service import Registry
from serving.console import charts
from serving.console.errors import ConsoleError
from serving.console.evals_pages import compare_suites, evaluations, runs_of
from serving.console.pages import ConsoleRoute, render
from serving.console.session import (
    MAX_SECRET,
    Session,
    check_login_token,
    current_session,
    end_session,
    new_login_token,
    set_login_token,
    start_session,
)

router = APIRouter(prefix="/ui", route_class=ConsoleRoute, include_in_schema=False)
SessionDep = Annotated[Session, Depends(current_session)]
Name = Annotated[str, PathParam(pattern=NAME_PATTERN)]
Number = Annotated[int, PathParam(ge=1, le=999_999_999)]
Csrf = Annotated[str, Form(max_length=128)]
Reason = Annotated[str, Form(max_length=MAX_REASON)]
AliasField = Annotated[str, Form(pattern=ALIAS_PATTERN)]
PAGE_SIZE = 20
MAX_COMPARED = 6
RUN_VERSIONS = 10  # the model page lists the eval runs of its newest versions
DONE = {  # what a change that redirected back says
    "promoted": "The alias moved; the history below records it.",
    "requested": "The promotion waits for a second admin's approval.",
    "approved": "Approved: the alias moved; the history below records both admins.",
    "rejected": "The promotion request was rejected.",
    "rolled_back": "The alias moved back; the history below records it.",
}


def admin_registry(request: Request, session: SessionDep) -> Registry:
    """The registry acting as the session's key, which must be an admin's (as on the API)."""
    session.require_admin()
    caller = session.caller
    return request.app.state.gateway.registry.acting_as(caller.actor, made_by=caller.made_by)


RegistryDep = Annotated[Registry, Depends(admin_registry)]


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


# -- log in and out ---------------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request) -> Response:
    token = new_login_token()
    response = render(request, "login.html", None, token=token)
    set_login_token(response, token, _secure(request))
    return response


@router.post("/login")
def login(
    request: Request,
    api_key: Annotated[str, Form(max_length=MAX_SECRET)],
    csrf_token: Csrf = "",
) -> Response:
    check_login_token(request, csrf_token)
    key = request.app.state.gateway.keys.authenticate(api_key.strip())
    if key is None:
        raise ConsoleError(
            401, "That API key is not valid (unknown or revoked).", title="Log in failed"
        )
    if key.device:
        raise ConsoleError(
            403,
            "A device key works on the edge routes only; log in with a person's key.",
            title="Log in failed",
        )
    response = RedirectResponse("/ui/" if key.admin else "/ui/jobs", status_code=303)
    start_session(request, response, key, _secure(request))
    return response


@router.post("/logout")
def logout(request: Request, session: SessionDep, csrf_token: Csrf = "") -> Response:
    session.check_csrf(csrf_token)
    response = RedirectResponse("/ui/login", status_code=303)
    end_session(request, session, response)
    return response


# -- models and versions ----------------------------------------------------------------------


@router.get("/")
def models_page(
    request: Request,
    session: SessionDep,
    registry: RegistryDep,
    q: Annotated[str, Query(max_length=128)] = "",
) -> HTMLResponse:
    held: dict[str, dict[str, int]] = {}
    for alias in registry.aliases():
        held.setdefault(alias.name, {})[alias.alias] = alias.version
    models = registry.list_models(q or None, limit=200)
    return render(request, "models.html", session, models=models, aliases=held, q=q)


def _matches(version: ModelVersion, q: str, aliases: list[str]) -> bool:
    text = " ".join(
        [str(version.version), version.kind.value, version.format.value, version.created_by]
        + [f"{k}={v}" for k, v in version.tags.items()]
        + aliases
    )
    return q.lower() in text.lower()


def _versions_table(
    registry: Registry, name: str, versions: list[ModelVersion], q: str, page: int
) -> dict:
    held: dict[int, list[str]] = {}
    for alias in registry.aliases(name):
        held.setdefault(alias.version, []).append(alias.alias)
    found = [v for v in reversed(versions) if not q or _matches(v, q, held.get(v.version, []))]
    pages = max((len(found) + PAGE_SIZE - 1) // PAGE_SIZE, 1)
    page = min(page, pages)
    return {
        "name": name,
        "rows": found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE],
        "held": held,
        "q": q,
        "page": page,
        "pages": pages,
        "total": len(found),
    }


def _model_context(
    registry: Registry, name: str, versions: list[ModelVersion], metric: str
) -> dict:
    model = registry.store.get_model(name)
    metric_names = sorted({m for v in versions for m in v.metrics})
    metric = metric if metric in metric_names else (metric_names[0] if metric_names else "")
    return {
        "model": model,
        "versions": versions,
        "aliases": registry.aliases(name),
        "history": list(reversed(registry.history(name))),
        "pending": registry.pending(name, PromotionStatus.PENDING),
        "metric_names": metric_names,
        "trend": charts.trend(versions, metric) if metric else None,
    }


@router.get("/models/{name}")
def model_page(
    request: Request,
    session: SessionDep,
    registry: RegistryDep,
    name: Name,
    q: Annotated[str, Query(max_length=128)] = "",
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    metric: Annotated[str, Query(max_length=128)] = "",
    done: Annotated[str, Query(max_length=32)] = "",
) -> HTMLResponse:
    versions = registry.list_versions(name)
    table = _versions_table(registry, name, versions, q, page)
    if request.headers.get("hx-request") and request.headers.get("hx-target") == "versions":
        return render(request, "_versions.html", session, **table)
    context = _model_context(registry, name, versions, metric)
    runs = runs_of(evaluations(request), versions[-RUN_VERSIONS:])
    return render(
        request, "model.html", session, table=table, runs=runs, notice=DONE.get(done), **context
    )


@router.get("/models/{name}/versions/{number}")
def version_page(
    request: Request, session: SessionDep, registry: RegistryDep, name: Name, number: Number
) -> HTMLResponse:
    version = registry.resolve(f"{name}:{number}")
    known = {v.ref: v for v in registry.list_versions(name, include_archived=True)}
    ancestors = registry.lineage(version, known)
    held = [a.alias for a in registry.aliases(name) if a.version == version.version]
    manifest = registry.artifacts.load_manifest(version.artifact_digest)
    return render(
        request,
        "version.html",
        session,
        version=version,
        aliases=held,
        lineage=charts.lineage(version, ancestors),
        related=charts.related(version),
        files=manifest.files,
    )


@router.post("/models/{name}/versions/{number}/verify")
def verify(
    request: Request,
    session: SessionDep,
    registry: RegistryDep,
    name: Name,
    number: Number,
    csrf_token: Csrf = "",
) -> HTMLResponse:
    session.check_csrf(csrf_token or request.headers.get("x-csrf-token", ""))
    manifest = registry.verify(f"{name}:{number}")
    return render(request, "_verified.html", session, manifest=manifest, ref=f"{name}:{number}")


@router.get("/models/{name}/compare")
def compare_page(
    request: Request,
    session: SessionDep,
    registry: RegistryDep,
    name: Name,
    v: Annotated[list[int], Query(max_length=MAX_COMPARED)] = [],  # noqa: B006
    diff: bool = False,
) -> HTMLResponse:
    numbers = sorted(set(v))
    if len(numbers) < 2:
        raise ConsoleError(
            400, "Choose two or more versions to compare.", title="Nothing to compare"
        )
    known = {v.ref: v for v in registry.list_versions(name, include_archived=True)}
    versions = [known.get(f"{name}:{n}") or registry.resolve(f"{name}:{n}") for n in numbers]
    rows: list[tuple[str, list[str]]] = [
        ("kind", [x.kind.value for x in versions]),
        ("format", [x.format.value for x in versions]),
        ("parent", [x.parent or "" for x in versions]),
        ("created by", [x.created_by for x in versions]),
        ("artifact digest", [x.artifact_digest for x in versions]),
        ("recipe digest", [x.recipe_digest or "" for x in versions]),
        ("dataset digests", [" ".join(x.dataset_digests) for x in versions]),
    ]
    lineage = [
        (f"lineage of {x.ref}", [r.ref for r in registry.lineage(x, known)]) for x in versions
    ]
    metrics = sorted({m for x in versions for m in x.metrics})
    first = versions[0].metrics
    metric_rows = [
        (
            m,
            [x.metrics.get(m) for x in versions],
            [_delta(x.metrics.get(m), first.get(m)) for x in versions],
        )
        for m in metrics
    ]
    tags = sorted({t for x in versions for t in x.tags})
    tag_rows = [(t, [x.tags.get(t, "") for x in versions]) for t in tags]
    if diff:
        rows = [r for r in rows if len(set(r[1])) > 1]
        metric_rows = [r for r in metric_rows if len(set(r[1])) > 1]
        tag_rows = [r for r in tag_rows if len(set(r[1])) > 1]
    return render(
        request,
        "compare.html",
        session,
        name=name,
        versions=versions,
        rows=rows,
        metric_rows=metric_rows,
        tag_rows=tag_rows,
        lineage=lineage,
        suites=compare_suites(evaluations(request), versions),
        diff=diff,
    )


def _delta(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or baseline is None else value - baseline


# -- aliases and promotions -------------------------------------------------------------------


def _required(reason: str, what: str) -> str:
    if not reason.strip():
        raise ConsoleError(
            400, f"{what} needs a reason; nothing was changed.", title="Reason required"
        )
    return reason.strip()


def _back(name: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"/ui/models/{name}?done={done}#history", status_code=303)


@contextmanager
def _second_admin_or_break_glass(name: str, alias: str) -> Iterator[None]:
    """The registry's refusal to move a two-person alias alone, in the console's words (its
    own message names the CLI's flag and the API's field)."""
    try:
        yield
    except RegistryError as err:
        if err.api_code != "break_glass_required":
            raise
        raise ConsoleError(
            403,
            f"{name}@{alias} is a two-person alias: it moves when a second admin approves a "
            "request (tick 'Needs approval by a second admin'), or alone with a break-glass "
            "reason, which the alias history records. Nothing was changed.",
            title="Second admin or break-glass reason required",
        ) from None


@router.post("/models/{name}/promote")
def promote(
    session: SessionDep,
    registry: RegistryDep,
    name: Name,
    version: Annotated[int, Form(ge=1, le=999_999_999)],
    alias: AliasField = "production",
    reason: Reason = "",
    approval: Annotated[bool, Form()] = False,
    break_glass: Reason = "",
    csrf_token: Csrf = "",
) -> Response:
    session.check_csrf(csrf_token)
    reason = _required(reason, "A promotion")
    if approval:
        registry.request_promotion(f"{name}:{version}", alias, reason=reason)
        return _back(name, "requested")
    with _second_admin_or_break_glass(name, alias):
        registry.promote(f"{name}:{version}", alias, reason=reason, break_glass=break_glass.strip())
    return _back(name, "promoted")


@router.post("/models/{name}/promotions/{promotion_id}")
def decide(
    session: SessionDep,
    registry: RegistryDep,
    name: Name,
    promotion_id: Number,
    decision: Annotated[str, Form(pattern="^(approve|reject)$")],
    reason: Reason = "",
    csrf_token: Csrf = "",
) -> Response:
    session.check_csrf(csrf_token)
    registry.promotion_request(name, promotion_id)
    if decision == "approve":
        registry.approve(promotion_id, reason=reason.strip())
        return _back(name, "approved")
    registry.reject(promotion_id, reason=_required(reason, "A rejection"))
    return _back(name, "rejected")


@router.post("/models/{name}/rollback")
def rollback(
    session: SessionDep,
    registry: RegistryDep,
    name: Name,
    alias: AliasField = "production",
    reason: Reason = "",
    break_glass: Reason = "",
    csrf_token: Csrf = "",
) -> Response:
    session.check_csrf(csrf_token)
    reason = _required(reason, "A rollback")
    with _second_admin_or_break_glass(name, alias):
        registry.rollback(name, alias, reason=reason, break_glass=break_glass.strip())
    return _back(name, "rolled_back")
