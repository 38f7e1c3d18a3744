"""The gateway's FastAPI application, the top of the house: it mounts every package's router
in one place, gives them the gateway's services and its authentication, and runs start-up
work (engines, job recovery). New routers are mounted in `ROUTERS`."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from core.http import document_errors, install_error_handlers
from evals import api as evals_api
from evals.explain import api as explanations_api
from evals.feedback import api as feedback_api
from finetune import api as fine_tuning_api
from registry import api as registry_api
from serving.api import keys, openai, ops
from serving.auth import is_loopback
from serving.batches import api as batches_api
from serving.config import ServingConfig
from serving.console import automl_pages as console_automl
from serving.console import drift_pages as console_drift
from serving.console import evals_pages as console_evals
from serving.console import explain_pages as console_explain
from serving.console import jobs_pages as console_jobs
from serving.console import keys_pages as console_keys
from serving.console import routes as console
from serving.console import traffic_pages as console_traffic
from serving.console.pages import STATIC_DIR as CONSOLE_STATIC
from serving.edge import api as edge_api
from serving.gateway import Gateway
from serving.middleware import GatewayMiddleware, TracingMiddleware

ROUTERS = (
    ops.router,
    openai.router,
    keys.router,
    registry_api.router,
    fine_tuning_api.router,
    explanations_api.router,
    feedback_api.router,
    evals_api.router,
    batches_api.router,
    edge_api.router,
    console.router,
    console_keys.router,
    console_evals.router,
    console_jobs.router,
    console_traffic.router,
    console_explain.router,
    console_drift.router,
    console_automl.router,
)


def create_app(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.aclose()

    app = FastAPI(title="llmops gateway", lifespan=lifespan)
    app.state.gateway = gateway
    app.state.registry = gateway.registry
    app.state.fine_tuning = gateway.fine_tuning
    app.state.explanations = gateway.explanations
    app.state.feedback = gateway.feedback
    app.state.evaluations = gateway.evaluations
    app.state.batches = gateway.batches
    app.state.edge = gateway.edge
    app.state.authenticate = gateway.auth.caller
    install_error_handlers(app)
    document_errors(app)
    config = gateway.config
    private = config.private_docs_and_metrics
    if private is None:
        private = not is_loopback(config.host)
    keyed = ("/metrics", app.openapi_url, app.docs_url, app.redoc_url) if private else ()
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=config.limits.max_body_bytes,
        allowed_hosts=config.allowed_hosts,
        auth=gateway.auth,
        admin_prefixes=(f"{registry_api.router.prefix}/", keys.router.prefix),
        keyed_paths=frozenset(path for path in keyed if path),
        upload_limits=gateway.upload_limits,
        metrics=gateway.metrics,
    )
    app.add_middleware(TracingMiddleware)  # outermost: its span holds the whole request
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=CONSOLE_STATIC), name="console-static")
    return app


def server_options(config: ServingConfig) -> dict[str, Any]:
    """uvicorn's options for the gateway: its address, and X-Forwarded-Proto and
    X-Forwarded-For believed from `trusted_proxies` only (by itself uvicorn believes any
    loopback peer)."""
    return {
        "host": config.host,
        "port": config.port,
        "forwarded_allow_ips": config.trusted_proxies,
    }
