"""`configs/serving.yaml`: the gateway's address, limits and backends, validated on load."""

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.configs import load_yaml_config
from evals.drift.config import DriftConfig
from serving.batches.config import BatchesConfig
from serving.keys import MAX_RATE


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsConfig(_Config):
    max_body_bytes: int = Field(1 << 20, gt=0, description="Largest request body accepted (413).")
    max_tokens: int = Field(1024, gt=0, description="Cap on max_tokens per request (400).")
    max_prompt_tokens: int = Field(4096, gt=0, description="Longest prompt accepted (400).")
    max_concurrent_per_key: int = Field(
        64, gt=0, description="Requests one API key may have in flight at once (429)."
    )


class LocalBackendConfig(_Config):
    max_num_seqs: int = Field(32, gt=0, le=4096, description="Sequences in one running batch.")
    max_waiting: int = Field(
        256,
        gt=0,
        le=100_000,
        description="Sequences that may wait for a batch slot per model; beyond it 503.",
    )
    max_loaded_models: int = Field(
        2,
        gt=0,
        le=64,
        description="Base models held in memory; the least recently used idle one is "
        "unloaded to make room.",
    )
    quantization: Literal["bnb-4bit"] | None = Field(
        None, description="bnb-4bit: load weights as bitsandbytes NF4."
    )
    device_map: str | dict[str, Any] | None = Field(
        None, description="accelerate device map, e.g. 'auto' to shard across devices."
    )
    max_memory: dict[str, str] | None = Field(
        None, description="Per-device memory for device_map, e.g. {'0': '10GiB', 'cpu': '30GiB'}."
    )
    offload_folder: str | None = Field(
        None, description="Folder for layers that device_map places on 'disk'."
    )
    dtype: str = Field("auto", description="Weights dtype: auto, float32, bfloat16, float16.")


class ExplanationsConfig(_Config):
    max_prompt_tokens: int = Field(
        512, gt=0, le=65_536, description="Longest prompt an explanation takes (400)."
    )
    max_tokens_per_explanation: int = Field(
        2_000_000,
        gt=0,
        le=10**9,
        description="Tokens one explanation may run through the model, all its forward "
        "passes together (400 beyond; they count against the key's tokens per minute).",
    )
    max_batch_tokens: int = Field(
        8192,
        gt=0,
        le=1 << 20,
        description="Tokens in one forward pass: how many perturbations share a pass, and "
        "the longest that generation waits for an explanation.",
    )


class RateLimitConfig(_Config):
    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: per gateway process; redis: shared by all replicas."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Used by the redis backend.")
    window_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Length in seconds of the fixed windows the limits count in: a key's rpm "
        "and tpm are per window, so anything but 60 is for tests and demos.",
    )
    default_tpm: int | None = Field(
        2_000_000,
        gt=0,
        le=MAX_RATE,
        description="Tokens per window of a key created without a tpm of its own (429 "
        "beyond), so that one key cannot take all of an engine's tokens by default; as large "
        "as the default explanations.max_tokens_per_explanation, so that any explanation fits "
        "in one window. Give a key its own tpm to raise or lower it; null: no default limit.",
    )


class TrafficConfig(_Config):
    enabled: bool = Field(True, description="Log every request and response.")
    retention_days: float = Field(
        30.0, gt=0, description="Records older than this are deleted (checked every minute)."
    )
    max_rows: int = Field(
        1_000_000, gt=0, description="At most this many records are kept; the oldest go first."
    )
    redactor: str | None = Field(
        None, description="'pii' or 'package.module:callable' applied to prompts and outputs."
    )


class OpenAIConfig(_Config):
    unsupported_fields: Literal["reject", "warn"] = Field(
        "reject",
        description="A request field the gateway cannot honour: reject it with a 400 naming "
        "it (as OpenAI does), or drop it with a logged warning.",
    )
    tool_call_parser: Literal["hermes", "llama3_json"] = Field(
        "hermes",
        description="The format in which models call tools: how calls are read from their "
        "output and how a required call is enforced.",
    )
    tool_call_parsers: dict[str, Literal["hermes", "llama3_json"]] = Field(
        default_factory=dict, description="Per registry model name, where it differs."
    )


class DriftMonitorConfig(DriftConfig):
    enabled: bool = Field(
        True, description="Check each served version's traffic for drift now and then."
    )
    every_s: float = Field(
        60.0, ge=1, description="How often versions that answered since the last time are checked."
    )


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VllmModelConfig(_Config):
    model: str = Field(description="Registry model name; every version of it is served by vLLM.")
    replicas: int = Field(1, ge=1, description="Servers to launch per version (ignored with urls).")
    urls: list[str] = Field(
        default_factory=list, description="External vLLM servers to use instead of launching."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="Shards per server (tensor parallel).")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages per server.")
    max_model_len: int | None = Field(None, gt=0, description="Context length to serve.")
    max_loras: int = Field(4, ge=1, description="Adapters held at once per server.")
    max_lora_rank: int = Field(8, description=f"Largest adapter rank; one of {VLLM_LORA_RANKS}.")
    extra_args: list[str] = Field(
        default_factory=list,
        description="More `vllm serve` arguments, e.g. ['--dtype', 'float32'].",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment of the servers, e.g. VLLM_CPU_KVCACHE_SPACE."
    )
    startup_timeout_s: float = Field(600, gt=0, description="How long a server may take to start.")
    max_restarts: int = Field(
        10, ge=0, description="Crashes in a row after which a server is no longer restarted."
    )
    api_key_env: str | None = Field(
        None, description="Environment variable holding the API key of the external `urls`."
    )

    @field_validator("max_lora_rank")
    @classmethod
    def _rank(cls, rank: int) -> int:
        if rank not in VLLM_LORA_RANKS:
            raise ValueError(f"vLLM accepts max_lora_rank in {VLLM_LORA_RANKS}, not {rank}")
        return rank


class VllmConfig(_Config):
    models: list[VllmModelConfig] = Field(
        default_factory=list, description="Models served by vLLM; all others use the local engine."
    )
    health_interval_s: float = Field(2.0, gt=0, description="Seconds between health checks.")
    read_timeout_s: float = Field(
        600.0, gt=0, description="Longest wait for the next bytes of a vLLM answer."
    )
    idle_stop_s: float = Field(
        900.0,
        gt=0,
        description="Launched servers of a version no alias points at are stopped after this "
        "long without a request.",
    )


class EdgeConfig(_Config):
    manifest_ttl_s: int = Field(
        86_400,
        gt=0,
        le=366 * 86_400,
        description="How long a signed edge bundle manifest is valid; devices refuse an "
        "expired one (sync at least this often).",
    )


class ServingConfig(_Config):
    host: str = Field(
        "127.0.0.1",
        description="Address to listen on. Without API keys the gateway is open only on a "
        "loopback address; anywhere else every request needs a key.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "::1"],
        description="Host header values the gateway answers (a defence against DNS "
        "rebinding); add the names clients use to reach it, or '*' for any.",
    )
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on (0: any free port).")
    private_docs_and_metrics: bool | None = Field(
        None,
        description="Whether /metrics, /docs, /redoc and /openapi.json need an API key (any "
        "valid key, as the /v1 routes do). Unset: they do when `host` is not a loopback "
        "address.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) of the reverse proxies in front of the "
        "gateway: only from these are X-Forwarded-Proto and X-Forwarded-For believed, so that "
        "behind a TLS-terminating proxy the console's cookies are Secure.",
    )
    resolve_ttl_s: float = Field(
        1.0,
        ge=0,
        description="How long a model-string resolution is cached; alias moves reach "
        "new requests within this time.",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    rate_limits: RateLimitConfig = Field(default_factory=RateLimitConfig)
    traffic: TrafficConfig = Field(default_factory=TrafficConfig)
    local: LocalBackendConfig = Field(default_factory=LocalBackendConfig)
    explanations: ExplanationsConfig = Field(default_factory=ExplanationsConfig)
    drift: DriftMonitorConfig = Field(default_factory=DriftMonitorConfig)
    vllm: VllmConfig = Field(default_factory=VllmConfig)
    batches: BatchesConfig = Field(default_factory=BatchesConfig)
    edge: EdgeConfig = Field(default_factory=EdgeConfig)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy)
            except ValueError as err:
                raise ValueError(
                    f"trusted_proxies holds IP addresses or networks such as 10.0.0.0/8: {err}"
                ) from None
        return proxies


def load_config(path: Path | None) -> ServingConfig:
    """Read and validate a serving config; StackError (INVALID) lists every wrong key."""
    if path is None:
        return ServingConfig()
    return load_yaml_config(path, ServingConfig, "serving config")
