"""The gateway's services, built on one database: the registry, keys, engines, generation,
rate limits, metrics, the traffic log, the fine-tuning jobs, explanations, feedback, the
drift monitor, batches and the edge update channel.
`serving.app` mounts the routers that use them."""

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from core.database import open_database, utc_now
from core.redaction import load_redactor
from core.settings import StackSettings
from evals import tables as evals_tables
from evals.continuous.events import LoopEvents
from evals.drift.checks import DriftCheck, DriftStore
from evals.drift.monitor import DriftMonitor, TemplateRenderer
from evals.explain.service import ExplainLimits, ExplanationService
from evals.feedback.service import FeedbackService, ServedRequest
from evals.handlers import EvalHandlers
from evals.runs import RunStore
from evals.service import Evaluations
from evals.settings import EvalsSettings
from finetune.runner import JobRunner
from finetune.service import FineTuningService
from registry.entities import VersionFormat
from registry.service import Registry, open_registry
from registry.settings import RegistrySettings
from serving.auth import Authenticator, is_loopback
from serving.batches.handlers import BatchHandlers
from serving.batches.runner import BatchRunner
from serving.batches.store import BatchStore
from serving.catalog import served_bases
from serving.config import ServingConfig
from serving.edge.handlers import EdgeHandlers
from serving.edge.signing import BundleSigner
from serving.edge.store import DeviceStore
from serving.engine import EngineClient
from serving.explanations import GatewayModelHost
from serving.generation import Generator, Limits
from serving.keys import KeyStore
from serving.local.engine import LocalEngine, LocalEngineConfig
from serving.metrics import GatewayMetrics
from serving.onnx.engine import OnnxEngine
from serving.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from serving.resolver import ModelResolver, ResolvedModel
from serving.responses.service import Responses
from serving.responses.store import ResponseStore
from serving.settings import ServingSettings
from serving.state_metrics import StateCollector
from serving.tables import CHAIN
from serving.traffic import Retention, TrafficLog
from serving.vllm.engine import VllmEngine

log = logging.getLogger(__name__)


@dataclass
class Gateway:
    """Everything a request handler reaches."""

    config: ServingConfig
    registry: Registry
    keys: KeyStore
    auth: Authenticator
    engines: list[EngineClient]
    generator: Generator
    responses: Responses
    limiter: RateLimiter
    traffic: TrafficLog | None
    metrics: GatewayMetrics
    jobs: JobRunner
    fine_tuning: FineTuningService
    explanations: ExplanationService
    feedback: FeedbackService
    evaluations: EvalHandlers  # the Evals API: runs on worker threads of this process
    drift: DriftMonitor | None  # None when the traffic log or the monitor is off
    upload_limits: dict[str, int]  # path pattern -> largest body, beyond `limits`
    batches: BatchHandlers
    batch_runner: BatchRunner
    edge: EdgeHandlers
    _tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def local(self) -> LocalEngine:
        return next(e for e in self.engines if isinstance(e, LocalEngine))

    async def start(self) -> None:
        for engine in self.engines:
            await engine.start()
        for run in await asyncio.to_thread(self.evaluations.recover):
            log.warning("evaluation run %s failed: %s", run.id, run.error)
        self._tasks = [asyncio.create_task(self._watch_jobs())]
        self._tasks.append(asyncio.create_task(self.batch_runner.run_forever()))
        if self.drift is not None:
            self._tasks.append(asyncio.create_task(self._watch_drift()))

    async def _watch_jobs(self) -> None:
        """Now and then: resume or fail jobs whose worker died, and start queued ones."""
        while True:
            try:
                await asyncio.to_thread(self.jobs.recover)
                await asyncio.to_thread(self.jobs.dispatch)
            except Exception:
                log.exception("recovering fine-tuning jobs failed; trying again later")
            await asyncio.sleep(self.jobs.settings.recover_every_s)

    async def _watch_drift(self) -> None:
        since = utc_now()
        while True:
            await asyncio.sleep(self.config.drift.every_s)
            now = utc_now()
            try:
                await asyncio.to_thread(self.check_drift, since)
                since = now
            except Exception:
                log.exception("checking traffic for drift failed; trying again later")

    def check_drift(self, since: datetime) -> list[DriftCheck]:
        """Check every version that answered since then; export each score."""
        assert self.drift is not None and self.traffic is not None
        checks = []
        for version in self.traffic.versions(since):
            check = self.drift.check(version, self.config.drift)
            if check is not None:
                self.metrics.drift_score.labels(check.model, version).set(check.score)
                self.metrics.drift_alarm.labels(check.model, version).set(int(check.drifted))
                checks.append(check)
        return checks

    def is_ready(self) -> bool:
        return all(engine.is_ready() for engine in self.engines)

    async def render_metrics(self) -> bytes:
        """`/metrics`: the gateway's own, the stack's state, and each vLLM replica's."""
        replicas = [
            replica
            for engine in self.engines
            if isinstance(engine, VllmEngine)
            for replica in await engine.replica_metrics()
        ]
        # The state gauges read the database: off the event loop.
        return await asyncio.to_thread(self.metrics.render, replicas)

    async def aclose(self) -> None:
        """Stop the engines; whatever fails, the traffic log still stores what it holds."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.batch_runner.aclose()
        await asyncio.to_thread(self.evaluations.close)
        try:
            for engine in self.engines:
                await engine.aclose()
            await self.limiter.aclose()
        finally:
            if self.traffic is not None:
                self.traffic.close()


def build_gateway(config: ServingConfig, stack: StackSettings) -> Gateway:
    registry_settings = RegistrySettings()
    registry = open_registry(stack, registry_settings)
    jobs = JobRunner.open(stack)
    database = open_database(stack.resolved_database_url, CHAIN)
    keys = KeyStore(database)
    metrics = GatewayMetrics()
    resolver = ModelResolver(registry, ttl=config.resolve_ttl_s)
    local = LocalEngine(LocalEngineConfig(**config.local.model_dump()))
    vllm = VllmEngine(config.vllm, stack.logs_dir / "vllm", lambda: served_bases(registry))
    onnx = OnnxEngine()
    engines: list[EngineClient] = [local, onnx, *([vllm] if config.vllm.models else [])]
    for engine in engines:
        metrics.watch_queue(engine.name, lambda e=engine: e.queue_depth)
    limiter: RateLimiter = (
        RedisRateLimiter(
            config.rate_limits.redis_url,
            window_s=config.rate_limits.window_s,
            default_tpm=config.rate_limits.default_tpm,
        )
        if config.rate_limits.backend == "redis"
        else MemoryRateLimiter(
            window_s=config.rate_limits.window_s, default_tpm=config.rate_limits.default_tpm
        )
    )
    traffic = None
    if config.traffic.enabled:
        traffic = TrafficLog(
            database,
            redact=load_redactor(config.traffic.redactor, "traffic.redactor"),
            retention=Retention(
                timedelta(days=config.traffic.retention_days), config.traffic.max_rows
            ),
            on_drop=metrics.traffic_dropped.inc,
        )

    def engine_for(resolved: ResolvedModel) -> EngineClient:
        if resolved.version.format is VersionFormat.ONNX:
            return onnx
        return vllm if vllm.serves(resolved.served) else local

    limits = Limits(
        config.limits.max_tokens,
        config.limits.max_prompt_tokens,
        config.limits.max_concurrent_per_key,
    )
    generator = Generator(resolver, engine_for, metrics, limits, limiter, traffic, config.openai)
    explanations = ExplanationService(
        GatewayModelHost(resolver, local, keys, limiter, generator.in_flight),
        ExplainLimits(**config.explanations.model_dump()),
    )
    metrics.explanations_running.set_function(lambda: explanations.running)

    def served_requests(request_id: str) -> list[ServedRequest]:
        records = traffic.find(request_id) if traffic is not None else []
        return [ServedRequest(r.request_id, r.key_id, r.version) for r in records]

    evals_database = open_database(stack.resolved_database_url, evals_tables.CHAIN)
    run_store = RunStore(evals_database, stack.home)
    metrics.registry.register(
        StateCollector(
            jobs.store, run_store, DriftStore(evals_database), LoopEvents(evals_database)
        )
    )
    drift = None
    if traffic is not None and config.drift.enabled:
        drift = DriftMonitor(traffic, evals_database, TemplateRenderer(registry))

    fine_tuning = FineTuningService(jobs, registry)
    batch_store = BatchStore(database)
    return Gateway(
        config=config,
        registry=registry,
        keys=keys,
        auth=Authenticator(keys, open_without_keys=is_loopback(config.host)),
        engines=engines,
        generator=generator,
        responses=Responses(generator, ResponseStore(database)),
        limiter=limiter,
        traffic=traffic,
        metrics=metrics,
        jobs=jobs,
        fine_tuning=fine_tuning,
        explanations=explanations,
        feedback=FeedbackService(evals_database, served_requests),
        evaluations=EvalHandlers.create(
            Evaluations(registry, run_store, EvalsSettings(), stack.actor)
        ),
        drift=drift,
        batches=BatchHandlers(batch_store, fine_tuning, config.batches),
        batch_runner=BatchRunner(batch_store, fine_tuning, keys, generator, config.batches),
        edge=EdgeHandlers(
            registry,
            keys,
            DeviceStore(database),
            BundleSigner(ServingSettings().signing_key_path(stack.resolved_home)),
            config.edge.manifest_ttl_s,
        ),
        upload_limits={
            "/v1/files": jobs.settings.max_file_bytes,
            "/v1/registry/models/[^/]+/versions/upload": registry_settings.max_upload_bytes,
        },
    )
