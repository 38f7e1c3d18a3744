"""Serving benchmarks: local-engine batching, gateway overhead over vLLM, local vs vLLM.

    python scripts/bench_serving.py [--output benchmarks/results/bench_serving.json] [--quick]

Every comparison runs its baseline in the same process on the same model, and is reported
as a ratio. The model is a randomly initialised Llama of the demo model's shape (hidden 128,
2 heads of 64, 4 layers, the demo tokenizer) with peaked logits, so that every request
generates its full max_tokens without stopping early.
"""

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch
import yaml
from bench_record import default_output, write_result
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.settings import StackSettings
from finetune.demo.random_model import build_random_model
from finetune.demo.skills import SKILLS, generate_splits
from registry.service import open_registry
from serving.vllm.engine import free_port
from serving.vllm.server import LaunchSpec, VllmServer, wait_ready


def build_model(path: Path) -> Path:
    """The demo model's shape (hidden 128, 4 layers, head dim 64), untrained, with peaked
    logits and no end-of-sequence token, so that every request generates its full budget."""
    build_random_model(
        path,
        hidden_size=128,
        num_layers=4,
        initializer_range=0.5,
        vocab_size=352,
        max_position_embeddings=512,
    )
    model = AutoModelForCausalLM.from_pretrained(path)
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None
    model.save_pretrained(path)
    return path


def prompts(n: int, mixed: bool) -> list[tuple[str, int]]:
    """(user message, max_tokens) pairs; mixed ones vary in length and budget."""
    rows = [r for skill in SKILLS.values() for r in generate_splits(skill, 1, n, 1)[0]]
    result = []
    for i in range(n):
        text = rows[i % len(rows)]["messages"][0]["content"]
        if mixed:
            result.append((text * (1 + i % 4), (8, 16, 32, 128)[i % 4]))
        else:
            result.append((text, 64))
    return result


def chat_bodies(model: str, work: list[tuple[str, int]]) -> list[dict]:
    """Greedy chat requests for (user message, max_tokens) pairs."""
    return [
        {
            "model": model,
            "messages": [{"role": "user", "content": t}],
            "max_tokens": m,
            "temperature": 0,
        }
        for t, m in work
    ]


def chat_ids(tokenizer, text: str) -> list[int]:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(rendered, add_special_tokens=False).input_ids


class GatewayProcess:
    """`llm-serve` in its own process, as in production; this process only sends load."""

    def __init__(self, home: Path, config: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = home / "serving.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.env = {**os.environ, "LLMOPS_HOME": str(home), "LLMOPS_SERVING_DEMO_MODEL": "bench"}

    def __enter__(self) -> "GatewayProcess":
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        while True:
            assert self.process.poll() is None, "the gateway exited"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health").status_code == 200:
                    return self
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait()


async def http_load(
    url: str, bodies: list[dict], path: str = "/v1/chat/completions", concurrency: int | None = None
) -> tuple[float, list[float], int]:
    """Send `bodies` with at most `concurrency` in flight; (seconds, latencies, tokens)."""
    limit = asyncio.Semaphore(concurrency or len(bodies))
    latencies: list[float] = []
    tokens = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(body: dict) -> None:
            nonlocal tokens
            async with limit:
                start = time.perf_counter()
                response = await client.post(path, json=body)
                latencies.append(time.perf_counter() - start)
                response.raise_for_status()
                tokens += response.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - start, latencies, tokens


def local_engine_benchmarks(server: GatewayProcess, model_dir: Path, quick: bool) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    results = {}

    # 1a. 32 concurrent requests x 64 tokens through HTTP vs the same prompts one by one.
    work = prompts(32, mixed=False)
    bodies = chat_bodies("bench", work)
    asyncio.run(http_load(server.url, bodies[:4]))  # load the model, warm up
    seconds, _, tokens = asyncio.run(http_load(server.url, bodies))
    sequential = work[: 8 if quick else 32]
    start = time.perf_counter()
    seq_tokens = 0
    with torch.inference_mode():
        for text, max_tokens in sequential:
            ids = torch.tensor([chat_ids(tokenizer, text)])
            out = model.generate(
                ids,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            seq_tokens += out.shape[1] - ids.shape[1]
    seq_seconds = time.perf_counter() - start
    results["concurrent_http_vs_sequential_generate"] = {
        "requests": len(bodies),
        "max_tokens": 64,
        "gateway_tokens_per_s": tokens / seconds,
        "sequential_generate_tokens_per_s": seq_tokens / seq_seconds,
        "ratio": (tokens / seconds) / (seq_tokens / seq_seconds),
        "target": 10.0,
    }

    # 1b. A mixed-length workload: continuous batching vs one static padded generate batch.
    mixed = prompts(32, mixed=True)
    bodies = chat_bodies("bench", mixed)
    seconds, _, tokens = asyncio.run(http_load(server.url, bodies))
    ids = [chat_ids(tokenizer, t) for t, _ in mixed]
    width = max(len(i) for i in ids)
    batch = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(batch)
    for row, i in enumerate(ids):
        batch[row, width - len(i) :] = torch.tensor(i)
        mask[row, width - len(i) :] = 1
    longest = max(m for _, m in mixed)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            batch,
            attention_mask=mask,
            max_new_tokens=longest,
            min_new_tokens=longest,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    static_seconds = time.perf_counter() - start
    useful = sum(m for _, m in mixed)  # tokens the requests asked for; the rest is padding work
    results["mixed_lengths_continuous_vs_static_batch"] = {
        "requests": len(mixed),
        "max_tokens": sorted({m for _, m in mixed}),
        "gateway_tokens_per_s": tokens / seconds,
        "static_batch_tokens_per_s": useful / static_seconds,
        "ratio": (tokens / seconds) / (useful / static_seconds),
        "target": 1.2,
    }

    # 1c. Free requests sharing the batch with grammar-constrained ones vs with free ones: the
    # same batch size and lengths, so only the constrained rows' grammar work differs. The
    # schema cannot be complete in 64 tokens, so the constrained rows run as long.
    free = chat_bodies("bench", prompts(16, mixed=False))
    schema = {"type": "array", "items": {"type": "boolean"}, "minItems": 64}
    json_format = {"type": "json_schema", "json_schema": {"name": "flags", "schema": schema}}
    companions = {
        "free": chat_bodies("bench", prompts(16, mixed=False)),
        "constrained": [
            {**b, "response_format": json_format}
            for b in chat_bodies("bench", prompts(16, mixed=False))
        ],
    }
    rounds: dict[str, list[float]] = {name: [] for name in companions}
    for others in companions.values():
        asyncio.run(_mixed_load(server.url, free[:2], others[:2]))  # warm up (grammar compiled)
    for _ in range(3):  # interleaved, so that a slower moment of the machine hits both
        for name, others in companions.items():
            rounds[name].append(asyncio.run(_mixed_load(server.url, free, others)))
    latency = {name: statistics.median(times) for name, times in rounds.items()}
    results["free_requests_beside_constrained_ones"] = {
        "requests": "16 free + 16 companions, 64 tokens each, greedy",
        "free_latency_s_beside_free": latency["free"],
        "free_latency_s_beside_constrained": latency["constrained"],
        "ratio": latency["constrained"] / latency["free"],
        "target_at_most": 1.10,
    }
    return results


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def vllm_benchmarks(server: GatewayProcess, upstream: str, quick: bool) -> dict:
    work = prompts(16 if quick else 64, mixed=False)

    def body(text: str, model: str) -> dict:
        return {"model": model, "prompt": text, "max_tokens": 16, "temperature": 0}

    direct_bodies = [body(t, "bench-vllm:1") for t, _ in work]
    gateway_bodies = [body(t, "bench-vllm") for t, _ in work]
    results = {}

    def load(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float], int]:
        return asyncio.run(http_load(url, bodies, "/v1/completions", concurrency))

    # Warm up both paths at both concurrencies: vLLM's first batches of a new size are slow.
    for url, bodies in ((upstream, direct_bodies), (server.url, gateway_bodies)):
        load(url, bodies, 1)
        load(url, bodies, 32)

    # 2. Gateway overhead: sequential latency and concurrent throughput, direct vs through,
    # alternated so that drift of the machine falls on both sides.
    direct_lat, gateway_lat = [], []
    direct_rate, gateway_rate = [0.0, 0], [0.0, 0]
    for _ in range(2):
        direct_lat += load(upstream, direct_bodies, 1)[1]
        gateway_lat += load(server.url, gateway_bodies, 1)[1]
        for url, bodies, rate in (
            (upstream, direct_bodies, direct_rate),
            (server.url, gateway_bodies, gateway_rate),
        ):
            seconds, _, tokens = load(url, bodies, 32)
            rate[0] += seconds
            rate[1] += tokens
    results["gateway_overhead_vs_direct_vllm"] = {
        "requests": len(work),
        "max_tokens": 16,
        "direct_p50_ms": 1000 * percentile(direct_lat, 50),
        "gateway_p50_ms": 1000 * percentile(gateway_lat, 50),
        "added_p50_ms": 1000 * (percentile(gateway_lat, 50) - percentile(direct_lat, 50)),
        "added_p99_ms": 1000 * (percentile(gateway_lat, 99) - percentile(direct_lat, 99)),
        "throughput_ratio": (gateway_rate[1] / gateway_rate[0]) / (direct_rate[1] / direct_rate[0]),
        "target_added_p50_ms": 2.0,
        "target_throughput_ratio": 0.95,
    }

    # 3. vLLM under the load of benchmark 1a, which measured the local engine.
    chat_load = chat_bodies("bench-vllm", prompts(32, mixed=False))
    asyncio.run(http_load(server.url, chat_load[:4]))
    seconds, _, tokens = asyncio.run(http_load(server.url, chat_load))
    results["vllm_chat_tokens_per_s"] = tokens / seconds

    return results


async def _mixed_load(url: str, measured: list[dict], others: list[dict]) -> float:
    """Send `measured` and `others` at once; the mean latency of the `measured` requests."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(body: dict) -> float:
            start = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body)
            response.raise_for_status()
            return time.perf_counter() - start

        times = await asyncio.gather(*(one(b) for b in measured + others))
    return statistics.mean(times[: len(measured)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output(__file__))
    parser.add_argument("--quick", action="store_true", help="fewer baseline requests")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM comparisons")
    args = parser.parse_args()

    results = {
        "model": "Llama, hidden 128, 4 layers, 2 heads of 64, float32, untrained",
    }
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model_dir = build_model(home / "model")
        registry = open_registry(StackSettings(home=home))
        for name in ("bench", "bench-vllm"):
            registry.register(name, model_dir)
            registry.set_alias(name, "production", 1)
        config: dict = {"limits": {"max_tokens": 512}}
        # The local engine first, with nothing else running on the machine.
        with GatewayProcess(home, config) as server:
            results["local_engine"] = local_engine_benchmarks(server, model_dir, args.quick)
        if not args.no_vllm:
            # One vLLM server that the gateway uses as an external URL, so that the same load
            # can also go to it directly. vLLM's compute threads get the last core to
            # themselves, and the gateway and this load generator the others: on a small
            # machine, threads that spin-wait for each other otherwise make every number noise.
            cores = sorted(os.sched_getaffinity(0))
            spec = LaunchSpec(
                model_dir,
                "bench-vllm:1",
                free_port(),
                max_model_len=512,
                extra_args=("--dtype", "float32"),
                env={"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": str(cores[-1])},
            )
            vllm = VllmServer(f"http://127.0.0.1:{spec.port}", spec)
            vllm.launch()
            os.sched_setaffinity(0, cores[:-1] or cores)
            results["vllm_cores"] = (
                f"vLLM compute on core {cores[-1]}; gateway and load on {cores[:-1]}"
            )
            try:
                asyncio.run(_wait(vllm))
                config["vllm"] = {"models": [{"model": "bench-vllm", "urls": [vllm.url]}]}
                with GatewayProcess(home, config) as server:
                    results["vllm"] = vllm_benchmarks(server, vllm.url, args.quick)
            finally:
                vllm.stop()
            local = results["local_engine"]["concurrent_http_vs_sequential_generate"]
            results["local_engine_vs_vllm"] = {
                "load": "32 concurrent chat requests x 64 tokens, through the gateway",
                "local_tokens_per_s": local["gateway_tokens_per_s"],
                "vllm_tokens_per_s": results["vllm"].pop("vllm_chat_tokens_per_s"),
            }
            comparison = results["local_engine_vs_vllm"]
            comparison["ratio_local_over_vllm"] = (
                comparison["local_tokens_per_s"] / comparison["vllm_tokens_per_s"]
            )
    write_result(args.output, results)
    print(json.dumps(results, indent=2))


async def _wait(server: VllmServer) -> None:
    async with httpx.AsyncClient() as client:
        await wait_ready([server], client, timeout=600)


if __name__ == "__main__":
    main()
