"""The gateway's FastAPI application: OpenAI routes, health, metrics, keys and the registry."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from finetune.api import Caller, fine_tuning_router
from finetune.jobs import JobStore
from finetune.runner import JobRunner
from finetune.settings import FinetuneSettings
from registry.api import error_response
from registry.api import router as registry_router
from registry.entities import VersionKind
from registry.names import DEFAULT_ALIAS, FINE_TUNED_TAG
from registry.service import Registry
from registry.settings import RegistrySettings
from serving.auth import authorize
from serving.config import ServingConfig
from serving.database import open_database
from serving.engine import EngineClient
from serving.errors import ServingError, install_serving_error_handlers
from serving.generation import Generator, Limits, RequestContext
from serving.keys import ALL_MODELS, KeyStore
from serving.local.engine import LocalEngine, LocalEngineConfig
from serving.metrics import GatewayMetrics
from serving.middleware import GatewayMiddleware
from serving.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from serving.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from serving.resolver import ModelResolver, ResolvedModel
from serving.traffic import TrafficLog, load_redactor
from serving.vllm.engine import VllmEngine


@dataclass
class Gateway:
    """Everything a request handler reaches."""

    config: ServingConfig
    registry: Registry
    keys: KeyStore
    engines: list[EngineClient]
    generator: Generator
    limiter: RateLimiter
    traffic: TrafficLog | None
    metrics: GatewayMetrics
    jobs: JobRunner

    @property
    def local(self) -> LocalEngine:
        return next(e for e in self.engines if isinstance(e, LocalEngine))

    async def start(self) -> None:
        for engine in self.engines:
            await engine.start()
        await asyncio.to_thread(self._resume_jobs)

    def _resume_jobs(self) -> None:
        """Fine-tuning jobs whose worker died while no process watched are resumed or failed."""
        self.jobs.recover()
        self.jobs.dispatch()

    def is_ready(self) -> bool:
        return all(engine.is_ready() for engine in self.engines)

    async def aclose(self) -> None:
        for engine in self.engines:
            await engine.aclose()
        await self.limiter.aclose()
        if self.traffic is not None:
            self.traffic.close()


def build_gateway(
    config: ServingConfig, registry: Registry, home: Path, database_url: str
) -> Gateway:
    database = open_database(database_url)
    metrics = GatewayMetrics()
    resolver = ModelResolver(registry, home / "cache" / "models", ttl=config.resolve_ttl_s)
    local = LocalEngine(LocalEngineConfig(**config.local.model_dump()))
    vllm = VllmEngine(config.vllm.models, home / "logs" / "vllm", config.vllm.health_interval_s)
    engines: list[EngineClient] = [local, vllm] if config.vllm.models else [local]
    for engine in engines:
        metrics.watch_queue(engine.name, lambda e=engine: e.queue_depth)
    limiter: RateLimiter = (
        RedisRateLimiter(config.rate_limits.redis_url)
        if config.rate_limits.backend == "redis"
        else MemoryRateLimiter()
    )
    traffic = None
    if config.traffic.enabled:
        traffic = TrafficLog(database, redact=load_redactor(config.traffic.redactor))

    def engine_for(resolved: ResolvedModel) -> EngineClient:
        base_name = resolved.served.key.rsplit(":", 1)[0]
        return vllm if vllm.serves(base_name) else local

    limits = Limits(config.limits.max_tokens, config.limits.max_prompt_tokens)
    generator = Generator(resolver, engine_for, metrics, limits, limiter, traffic)
    jobs = JobRunner(
        JobStore.open(database_url),
        RegistrySettings(home=home, database_url=database_url, actor=registry.actor),
        FinetuneSettings(),
    )
    return Gateway(
        config, registry, KeyStore(database), engines, generator, limiter, traffic, metrics, jobs
    )


class KeyRequest(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    models: list[str] = Field(default_factory=lambda: [ALL_MODELS])
    admin: bool = False
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    log_traffic: bool = True


def create_app(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.aclose()

    app = FastAPI(title="llmops gateway", lifespan=lifespan)
    app.state.registry = gateway.registry
    install_serving_error_handlers(app)
    app.add_middleware(
        GatewayMiddleware,
        max_body_bytes=gateway.config.limits.max_body_bytes,
        upload_limits={"/v1/files": gateway.jobs.settings.max_file_bytes},
        metrics=gateway.metrics,
    )

    def require_admin(request: Request) -> None:
        authorize(gateway.keys, request, admin=True)

    def caller(request: Request) -> Caller:
        key = authorize(gateway.keys, request)
        if key is None:
            return Caller(None, sees_all=True)
        return Caller(key.id, sees_all=key.admin, may_use=key.allows)

    app.include_router(registry_router, dependencies=[Depends(require_admin)])
    app.include_router(fine_tuning_router(gateway.jobs, gateway.registry, caller))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        if gateway.is_ready():
            return Response('{"status":"ready"}', media_type="application/json")
        return error_response(503, "the model backend is not ready yet", code="not_ready")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    def list_models(request: Request) -> ModelList:
        key = authorize(gateway.keys, request)
        cards = _model_cards(gateway.registry)
        return ModelList(data=[c for c in cards if key is None or key.allows(c.id)])

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request):
        ctx = _context(request, body.model, "chat")
        return _respond(await gateway.generator.chat(body, ctx))

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request):
        ctx = _context(request, body.model, "completions")
        return _respond(await gateway.generator.complete(body, ctx))

    def _context(request: Request, model: str, endpoint: str) -> RequestContext:
        request.state.model = model
        key = authorize(gateway.keys, request, model=model)
        return RequestContext(request.state.request_id, key, endpoint)

    @app.post("/v1/keys", status_code=201, dependencies=[Depends(require_admin)])
    def create_key(body: KeyRequest) -> dict[str, Any]:
        key, secret = gateway.keys.create(
            body.name,
            models=tuple(body.models),
            admin=body.admin,
            rpm=body.rpm,
            tpm=body.tpm,
            log_traffic=body.log_traffic,
        )
        return {**key.to_dict(), "key": secret}

    @app.get("/v1/keys", dependencies=[Depends(require_admin)])
    def list_keys() -> dict[str, Any]:
        return {"object": "list", "data": [k.to_dict() for k in gateway.keys.list_keys()]}

    @app.delete("/v1/keys/{key_id}", dependencies=[Depends(require_admin)])
    def revoke_key(key_id: str) -> dict[str, Any]:
        try:
            return gateway.keys.revoke(key_id).to_dict()
        except KeyError as err:
            raise ServingError(404, err.args[0], code="key_not_found") from None

    return app


def _respond(result: BaseModel | AsyncIterator[bytes]) -> Response:
    """A streamed answer as server-sent events; a whole one serialized by pydantic directly
    (FastAPI's generic encoder costs a noticeable share of a request)."""
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json")
    return StreamingResponse(result, media_type="text/event-stream")


def _model_cards(registry: Registry) -> list[ModelCard]:
    """Every model's aliases (`name@alias`, and the bare name for production), with `parent`
    set to the base version for adapters."""
    versions = {v.ref: v for v in registry.list_versions(include_archived=True)}
    cards = []
    for alias in registry.aliases():
        version = versions[f"{alias.name}:{alias.version}"]
        parent = version.parent if version.kind is VersionKind.ADAPTER else None
        created = int(version.created_at.timestamp())
        ids = [f"{alias.name}@{alias.alias}"]
        if alias.alias == DEFAULT_ALIAS:
            ids.insert(0, alias.name)
        cards += [ModelCard(id=i, created=created, parent=parent, root=version.ref) for i in ids]
    for version in versions.values():
        if version.archived_at is None and FINE_TUNED_TAG in version.tags:
            cards.append(
                ModelCard(
                    id=version.tags[FINE_TUNED_TAG],
                    created=int(version.created_at.timestamp()),
                    parent=version.parent,
                    root=version.ref,
                )
            )
    return cards
