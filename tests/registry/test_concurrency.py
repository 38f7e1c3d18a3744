"""Two real processes moving the same alias at once lose no event and leave it consistent."""

import itertools
import multiprocessing as mp
from pathlib import Path

import pytest

from core.settings import StackSettings
from registry.service import open_registry

MOVES_PER_WORKER = 15


def _promote_many(settings: StackSettings, start, worker: int) -> None:
    registry = open_registry(settings)
    start.wait()
    for i in range(MOVES_PER_WORKER):
        target = 1 + (i + worker) % 2
        registry.promote(f"demo:{target}", "production", reason=f"worker {worker} move {i}")


@pytest.mark.slow
def test_concurrent_promotions(
    registry, settings: StackSettings, model_dir: Path, other_model_dir: Path
) -> None:
    registry.register("demo", model_dir)
    registry.register("demo", other_model_dir)
    registry.set_alias("demo", "production", 1)
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    workers = [ctx.Process(target=_promote_many, args=(settings, start, w)) for w in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]

    events = registry.history("demo", "production")
    assert len(events) == 1 + 2 * MOVES_PER_WORKER
    for before, after in itertools.pairwise(events):
        assert after.from_version == before.to_version, (before, after)
    assert registry.resolve("demo").version == events[-1].to_version
    reasons = {e.reason for e in events[1:]}
    assert len(reasons) == 2 * MOVES_PER_WORKER
