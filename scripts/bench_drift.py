"""Drift monitor benchmarks on simulated traffic, written to a real traffic log (SQLite) and
checked by the real monitor (all-MiniLM-L6-v2 embeddings, scipy tests).

    python scripts/bench_drift.py [--output benchmarks/results/bench_drift.json]
        [--references 30] [--windows 10]

- False alarms: stationary traffic (the demo model's skills), windows of 200 requests checked
  against a reference of the 500 before them, `--windows` windows after each of `--references`
  independent reference draws; the monitor's Bonferroni split of alpha across signals against the
  same tests each at alpha alone (the baseline), in the same run.
- Detection: after 30% of traffic shifts to tasks the reference never saw (reversing and
  sorting words), how many requests until the first alarm, checking every 25 requests.
- Scale: one check over a window of 100,000 logged requests once their embeddings are cached,
  against the same check embedding them afresh (the baseline).
"""

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench_record import default_output, write_result

from core.database import open_database, utc_now
from evals.drift.config import DriftConfig
from evals.drift.embeddings import Embedder, EmbeddingCache
from evals.drift.monitor import DriftMonitor
from evals.drift.signals import decide
from evals.tables import CHAIN as EVALS_CHAIN
from finetune.demo.skills import SKILLS
from serving.tables import CHAIN as SERVING_CHAIN
from serving.traffic import TrafficLog, TrafficRecord

KNOWN = ("add", "upper", "lookup")
UNKNOWN = ("reverse", "sort")
VERSION = "demo:1"


class Simulator:
    """Requests as the gateway logs them, one second apart."""

    def __init__(self, log: TrafficLog, seed: int):
        self.log = log
        self.rng = random.Random(seed)
        self.clock = utc_now() - timedelta(days=3)  # inside the log's retention
        self.count = 0

    def send(self, n: int, unknown_share: float = 0.0) -> None:
        for i in range(n):
            if i and i % 5000 == 0:
                self.log.flush()  # the log's queue holds 10,000; beyond, it drops
            skills = UNKNOWN if self.rng.random() < unknown_share else KNOWN
            skill = SKILLS[self.rng.choice(skills)]
            question = skill.prompt(skill.sample(self.rng))
            answer_tokens = self.rng.randint(1, 4)
            self.clock += timedelta(seconds=1)
            self.count += 1
            self.log.record(
                TrafficRecord(
                    created_at=self.clock,
                    request_id=f"r{self.count}",
                    key_id=None,
                    endpoint="chat",
                    model="demo",
                    version=VERSION,
                    backend="local",
                    prompt=f"<|user|>\n{question}<|end|>\n<|assistant|>\n",
                    output="x",
                    prompt_tokens=len(question) // 3 + 6,
                    completion_tokens=answer_tokens,
                    latency_ms=self.rng.randint(20, 60),
                    finish_reason="stop",
                    messages=[{"role": "user", "content": question}],
                )
            )
        self.log.flush()


def _fresh(folder: Path, name: str) -> tuple[TrafficLog, DriftMonitor]:
    url = f"sqlite:///{folder / name}.db"
    log = TrafficLog(open_database(url, SERVING_CHAIN), linger_s=0.0)
    engine = open_database(url, EVALS_CHAIN)
    return log, DriftMonitor(log, engine, lambda version, messages: ("", 0))


def false_alarms(folder: Path, references: int, windows: int, config: DriftConfig, embed) -> dict:
    """Stationary traffic: `windows` windows after each of `references` independent reference
    draws (a fresh log each), so that the rate is not that of one lucky or unlucky reference."""
    alarms = baseline = 0
    for draw in range(references):
        log, monitor = _fresh(folder, f"stationary-{draw}")
        monitor.embeddings = EmbeddingCache(monitor.engine, embed)
        sim = Simulator(log, seed=1000 + draw)
        sim.send(config.reference.requests)
        for _ in range(windows):
            sim.send(config.window)
            check = monitor.check(VERSION, config)
            alarms += check.drifted
            # the same tests with no false-alarm control: each signal at alpha on its own
            baseline += any(
                decide([s], config).drifted for s in check.signals if s.signal in config.deciding
            )
        log.close()
    checks = references * windows
    return {
        "reference_draws": references,
        "windows_per_reference": windows,
        "monitor": alarms / checks,
        "each_test_at_alpha": baseline / checks,
    }


def detection(folder: Path, seeds: int, config: DriftConfig, embed) -> dict:
    delays = []
    for seed in range(seeds):
        log, monitor = _fresh(folder, f"shift-{seed}")
        monitor.embeddings = EmbeddingCache(monitor.engine, embed)
        sim = Simulator(log, seed=100 + seed)
        sim.send(config.reference.requests + config.window)
        assert not monitor.check(VERSION, config).drifted
        after = 0
        while True:
            sim.send(25, unknown_share=0.3)
            after += 25
            if monitor.check(VERSION, config).drifted or after >= 2000:
                break
        delays.append(after)
        log.close()
    return {
        "runs": seeds,
        "median_requests": statistics.median(delays),
        "max_requests": max(delays),
        "delays": delays,
    }


def scale(folder: Path, requests: int, embed) -> dict:
    log, monitor = _fresh(folder, "scale")
    sim = Simulator(log, seed=7)
    sim.send(500 + requests)
    config = DriftConfig(window=requests, reference={"requests": 500})
    monitor.embeddings = EmbeddingCache(monitor.engine, embed)
    started = time.perf_counter()
    check = monitor.check(VERSION, config)
    uncached = time.perf_counter() - started
    assert check is not None and check.window_n == requests, check
    times = []
    for _ in range(3):
        started = time.perf_counter()
        monitor.check(VERSION, config)
        times.append(time.perf_counter() - started)
    # a new process: the embeddings come from the database, not memory
    monitor.embeddings = EmbeddingCache(monitor.engine, embed)
    started = time.perf_counter()
    monitor.check(VERSION, config)
    from_database = time.perf_counter() - started
    log.close()
    return {
        "requests": requests,
        "cached_s": min(times),
        "cached_in_database_s": from_database,
        "embedding_afresh_s": uncached,
        "speedup": uncached / min(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output(__file__))
    parser.add_argument("--references", type=int, default=30, help="independent reference draws")
    parser.add_argument("--windows", type=int, default=10, help="windows after each reference")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    config = DriftConfig(window=200, reference={"requests": 500})
    embed = Embedder()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report = {
            "false_alarms": false_alarms(folder, args.references, args.windows, config, embed),
            "detection": detection(folder, args.seeds, config, embed),
            "scale": scale(folder, args.requests, embed),
        }
    write_result(args.output, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
