"""How long the ops console's pages take on a demo-sized world: a real gateway (uvicorn, in
this process) over a registry holding `--versions` versions of `demo` with metrics and tags,
one alias moved `--moves` times, and a few API keys; each page is fetched `--repeat` times
over HTTP with a logged-in session after one warm-up fetch, and the median and worst are
written with the 300 ms budget the console aims at.

    python scripts/bench_console.py [--output benchmarks/results/bench_console.json] [--versions 50]
"""

import argparse
import json
import re
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from bench_record import default_output, write_result

from core.settings import StackSettings
from finetune.demo.random_model import build_random_model
from serving.app import create_app
from serving.config import ServingConfig
from serving.gateway import build_gateway
from serving.vllm.engine import free_port

BUDGET_MS = 300.0


def _world(home: Path, versions: int, moves: int) -> tuple[ServingConfig, StackSettings, str]:
    model = build_random_model(home / "random")
    config = ServingConfig(port=free_port())
    stack = StackSettings(home=home / "state", actor="bench")
    gateway = build_gateway(config, stack)
    registry = gateway.registry
    for number in range(1, versions + 1):
        files = home / f"v{number}"
        shutil.copytree(model, files)
        (files / "NOTES.txt").write_text(f"variant {number}\n")
        registry.register(
            "demo",
            files,
            parent=f"demo:{number - 1}" if number > 1 else None,
            metrics={"exact_match": (number % 10) / 10, "latency_ms": 10.0 + number},
            tags={"skill": ("add", "upper", "lookup")[number % 3]},
        )
        shutil.rmtree(files)
    for move in range(moves):
        registry.set_alias("demo", "production", 1 + move % versions, reason=f"move {move}")
    secret = gateway.keys.create("bench-admin", admin=True)[1]
    return config, stack, secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output(__file__))
    parser.add_argument("--versions", type=int, default=50)
    parser.add_argument("--moves", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        config, stack, secret = _world(Path(folder), args.versions, args.moves)
        app = create_app(build_gateway(config, stack))
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=config.port, log_level="warning")
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{config.port}/ui"
        last = args.versions
        pages = [
            "/",
            "/models/demo",
            "/models/demo?q=upper&page=2",
            f"/models/demo/versions/{last}",
            f"/models/demo/compare?v={last - 1}&v={last}",
            "/models/demo/drift",
            "/keys",
            "/jobs",
            "/traffic",
        ]
        results = {}
        with httpx.Client(base_url=base, timeout=60) as client:
            form = client.get("/login").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
            client.post("/login", data={"api_key": secret, "csrf_token": token})
            for page in pages:
                assert client.get(page).status_code == 200, page
                times = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    client.get(page).raise_for_status()
                    times.append((time.perf_counter() - started) * 1000)
                results[page] = {
                    "median_ms": round(statistics.median(times), 1),
                    "max_ms": round(max(times), 1),
                }
        server.should_exit = True

    report = {
        "versions": args.versions,
        "alias_moves": args.moves,
        "repeat": args.repeat,
        "budget_ms": BUDGET_MS,
        "pages": results,
        "all_within_budget": all(r["median_ms"] < BUDGET_MS for r in results.values()),
    }
    write_result(args.output, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
