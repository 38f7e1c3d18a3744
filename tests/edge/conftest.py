"""An ONNX bundle of the tiny random model (exported once per session by the model builder),
and a real gateway on a free port whose wire a test can cut or tamper with, as a broken
network or a man in the middle would."""

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn

from core.settings import StackSettings
from finetune.export.onnx import build_onnx
from llmops_edge.cli import main as edge_main
from registry.entities import ModelVersion
from serving.app import create_app
from serving.config import ServingConfig
from serving.edge.protocol import DeviceRequest
from serving.gateway import Gateway, build_gateway
from serving.vllm.engine import free_port


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory, random_model_dir: Path) -> Path:
    """The random model as an fp32 ONNX Runtime GenAI folder (an edge bundle)."""
    out = tmp_path_factory.mktemp("edge") / "onnx"
    build_onnx(random_model_dir, out, "fp32")
    return out


def changed_config(onnx_dir: Path, folder: Path, top_k: int) -> Path:
    """A copy of the bundle whose generation config alone differs: a config-only update."""
    shutil.copytree(onnx_dir, folder)
    config = json.loads((folder / "genai_config.json").read_text())
    config["search"]["top_k"] = top_k
    (folder / "genai_config.json").write_text(json.dumps(config, indent=4))
    return folder


Rewrite = Callable[[bytes], bytes]


@dataclass
class Wire:
    """An ASGI wrapper around the gateway: records request paths; `cut` drops the connection
    halfway through the next response whose path contains it; `tamper` rewrites the body of
    the next response whose path contains its first element."""

    app: Callable
    paths: list[str] = field(default_factory=list)
    cut: str | None = None
    tamper: tuple[str, Rewrite] | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        self.paths.append(path)
        if self.cut is not None and self.cut in path:
            self.cut = None
            return await self.app(scope, receive, self._cutting(send))
        if self.tamper is not None and self.tamper[0] in path:
            rewrite, self.tamper = self.tamper[1], None
            return await self.app(scope, receive, self._rewriting(send, rewrite))
        return await self.app(scope, receive, send)

    @staticmethod
    def _cutting(send):
        async def cut(message) -> None:
            if message["type"] == "http.response.body":
                body = message.get("body", b"")
                await send({**message, "body": body[: len(body) // 2], "more_body": True})
                raise ConnectionResetError("the server went away mid-file")
            await send(message)

        return cut

    @staticmethod
    def _rewriting(send, rewrite: Rewrite):
        start, chunks = {}, []

        async def rewriting(message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = rewrite(b"".join(chunks))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})

        return rewriting


@dataclass
class EdgeGateway:
    url: str
    gateway: Gateway
    wire: Wire
    admin_key: str

    def publish(self, name: str, folder: Path, alias: str = "edge") -> ModelVersion:
        """Register `folder` as the next ONNX version of `name` and point `alias` at it."""
        registry = self.gateway.registry
        version = registry.register(name, folder, kind="quantized", format="onnx")
        registry.set_alias(name, alias, version.version)
        return version

    def enroll(self, device_id: str, model: str, root: Path) -> tuple[Path, str]:
        """A device added on the gateway and enrolled with `llm-edge enroll` (its public key
        given as a file); the device folder and its API key."""
        created = self.gateway.edge.add(DeviceRequest(id=device_id, model=model))
        root.mkdir(parents=True, exist_ok=True)
        (root / "key").write_text(created.key)
        (root / "gateway.pub").write_text(self.gateway.edge.public_key().public_key)
        device = root / "device"
        edge_main(
            [
                *("enroll", "--gateway", self.url, "--dir", str(device)),
                *("--public-key", str(root / "gateway.pub"), "--api-key-file", str(root / "key")),
            ]
        )
        return device, created.key

    def get(self, path: str, key: str | None) -> httpx.Response:
        return httpx.get(self.url + path, headers=_auth(key), timeout=30)

    def post(self, path: str, key: str | None, body: dict) -> httpx.Response:
        return httpx.post(self.url + path, headers=_auth(key), json=body, timeout=30)

    def delete(self, path: str, key: str | None) -> httpx.Response:
        return httpx.delete(self.url + path, headers=_auth(key), timeout=30)


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture(scope="module")
def edge_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeGateway]:
    home = tmp_path_factory.mktemp("edge-home")
    config = ServingConfig(port=free_port())
    gateway = build_gateway(config, StackSettings(home=home, actor="tests"))
    _, admin_key = gateway.keys.create("ops", admin=True)
    wire = Wire(create_app(gateway))
    server = uvicorn.Server(
        uvicorn.Config(wire, host="127.0.0.1", port=config.port, log_level="critical")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    try:
        yield EdgeGateway(f"http://127.0.0.1:{config.port}", gateway, wire, admin_key)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
