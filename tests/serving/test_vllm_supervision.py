"""How the gateway supervises a launched server that keeps crashing: restarts after a
pause that doubles, gives up after `max_restarts`, and keeps one log handle open at most.
The server here is a process that exits at once (vLLM's own crashes take a minute)."""

import asyncio
import os
import sys
import time
from itertools import pairwise
from pathlib import Path

import httpx

from serving.vllm.engine import free_port
from serving.vllm.server import LaunchSpec, VllmServer


class _Crashing(LaunchSpec):
    def command(self) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit(3)"]


def _open_handles(path: Path) -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(path))


def test_a_crashing_server_restarts_with_backoff_and_is_given_up(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    spec = _Crashing(model_path=tmp_path, served_name="x:1", port=free_port(), log_path=log)
    server = VllmServer(f"http://127.0.0.1:{spec.port}", spec, max_restarts=2)
    launches: list[float] = []
    handles: list[int] = []

    async def supervise() -> None:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 30
            while not server.given_up:
                assert time.monotonic() < deadline, "the server was never given up"
                pid = server.pid
                await server.check(client)
                if server.pid != pid:
                    launches.append(time.monotonic())
                handles.append(_open_handles(log))
                await asyncio.sleep(0.05)

    asyncio.run(supervise())
    server.stop()
    assert len(launches) == 3 and server.restarts == 2  # the first launch, then two restarts
    pauses = [b - a for a, b in pairwise(launches)]
    assert pauses[0] >= 1.0 and pauses[1] >= 2.0  # 1 s, then 2 s
    assert max(handles) == 1 and _open_handles(log) == 0
    assert not server.ready
