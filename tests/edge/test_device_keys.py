"""A device key (`llm-serve edge add`) is no general API key: it syncs its own device's
bundle and nothing else: not another device's manifest or files (even of the same model),
no model through the OpenAI API, no other route; and its requests are rate limited. On a real
gateway, through `llm-edge` for the sync and the `openai` SDK for the rest."""

from pathlib import Path

import httpx
import openai
import pytest
from alembic import command

from core.database import engine_for
from serving.edge.protocol import DEVICE_RPM, DeviceRequest
from serving.tables import CHAIN
from tests.edge.conftest import EdgeGateway, changed_config
from tests.edge.test_sync import running, sync

pytestmark = pytest.mark.slow


def _refused(reply: httpx.Response, status: int, says: str) -> None:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["type"] == "permission_error" and says in error["message"], error


def test_a_device_syncs_its_own_bundle_and_no_other_devices(
    edge_gateway: EdgeGateway, onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = edge_gateway.publish("shop-onnx", onnx_dir)
    second = edge_gateway.publish(
        "shop-onnx", changed_config(onnx_dir, tmp_path / "v2", 3), alias="canary"
    )
    device, key = edge_gateway.enroll("till-1", "shop-onnx@edge", tmp_path / "till-1")
    edge_gateway.enroll("till-2", "shop-onnx@canary", tmp_path / "till-2")

    assert sync(device, "shop-onnx@edge", capsys)["status"] == "installed"
    assert running(device) == first.ref

    get = edge_gateway.get
    # till-2's manifest and the files of its version: the same model, another device's
    _refused(get("/v1/edge/bundles/shop-onnx@canary", key), 403, "follows 'shop-onnx@edge'")
    _refused(get(f"/v1/edge/bundles/{second.ref}", key), 403, "and only that")
    files = edge_gateway.gateway.registry.artifacts.load_manifest(second.artifact_digest).files
    config = next(f for f in files if f.path == "genai_config.json")
    _refused(
        get(f"/v1/edge/bundles/{second.ref}/files/{config.sha256}", key),
        403,
        f"which points at {first.ref} now",
    )
    report = {"device_id": "till-1", "model": "shop-onnx@canary", "status": "installed"}
    _refused(edge_gateway.post("/v1/edge/reports", key, report), 403, "follows 'shop-onnx@edge'")
    assert get("/v1/edge/bundles/shop-onnx@canary", edge_gateway.admin_key).status_code == 200


def test_a_device_key_uses_no_model(edge_gateway: EdgeGateway, onnx_dir: Path) -> None:
    edge_gateway.publish("kiosk-onnx", onnx_dir)
    created = edge_gateway.gateway.edge.add(DeviceRequest(id="kiosk-m", model="kiosk-onnx@edge"))
    client = openai.OpenAI(base_url=f"{edge_gateway.url}/v1", api_key=created.key, max_retries=0)
    hello = [{"role": "user", "content": "hello"}]
    for model in ("kiosk-onnx@edge", "kiosk-onnx"):  # the very model its device follows
        with pytest.raises(openai.PermissionDeniedError) as denied:
            client.chat.completions.create(model=model, messages=hello, max_tokens=2)
        assert denied.value.body["type"] == "permission_error"
        with pytest.raises(openai.PermissionDeniedError):
            client.responses.create(model=model, input="hello", max_output_tokens=2)
        with pytest.raises(openai.PermissionDeniedError):
            client.completions.create(model=model, prompt="hello", max_tokens=2)


def test_a_device_key_is_refused_on_every_other_route(
    edge_gateway: EdgeGateway, tmp_path: Path
) -> None:
    """Needs the route check in `Authenticator.key` (serving/auth.py): `ApiKey.admits`."""
    created = edge_gateway.gateway.edge.add(DeviceRequest(id="kiosk-r", model="r-onnx@edge"))
    client = openai.OpenAI(base_url=f"{edge_gateway.url}/v1", api_key=created.key, max_retries=0)
    upload = tmp_path / "train.jsonl"
    upload.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    calls = {
        "models": lambda: client.models.list(),
        "files": lambda: client.files.list(),
        "upload": lambda: client.files.create(file=upload.open("rb"), purpose="fine-tune"),
        "jobs": lambda: client.fine_tuning.jobs.list(),
        "batches": lambda: client.batches.list(),
        "evals": lambda: client.evals.list(),
    }
    for name, call in calls.items():
        with pytest.raises(openai.PermissionDeniedError) as denied:
            call()
        assert denied.value.code == "device_key_not_allowed", name
        assert "may call only the edge routes" in denied.value.message, name
    registry = edge_gateway.get("/v1/registry/models", created.key)
    assert registry.status_code == 403 and registry.json()["error"]["code"]
    assert edge_gateway.get("/v1/edge/device", created.key).json()["id"] == "kiosk-r"


def test_device_keys_are_rate_limited(edge_gateway: EdgeGateway, tmp_path: Path) -> None:
    created = edge_gateway.gateway.edge.add(DeviceRequest(id="kiosk-l", model="l-onnx@edge"))
    stored = edge_gateway.gateway.keys.get(created.key_id)
    assert (stored.rpm, stored.device, stored.admin) == (DEVICE_RPM, True, False)

    slow = edge_gateway.gateway.edge.add(DeviceRequest(id="kiosk-s", model="s-onnx@edge", rpm=3))
    replies = [edge_gateway.get("/v1/edge/device", slow.key) for _ in range(4)]
    assert [r.status_code for r in replies[:3]] == [200, 200, 200]
    assert replies[3].status_code == 429 and replies[3].headers["retry-after"]
    error = replies[3].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "3 of 3 requests" in error["message"]


def test_keys_of_existing_devices_become_device_keys(tmp_path: Path) -> None:
    """The migration to s0011 gives the keys of enrolled devices the device scope and, where
    they had none, a rate limit; other keys are left as they were."""
    engine = engine_for(f"sqlite:///{tmp_path / 'stack.db'}")

    def upgrade(revision: str) -> None:
        config = CHAIN.config()
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)

    upgrade("s0010")
    with engine.begin() as conn:
        for key_id, rpm in (("key_dev", None), ("key_fast", 5), ("key_app", None)):
            conn.exec_driver_sql(
                "INSERT INTO serving_api_keys (id, name, key_hash, prefix, models, admin, rpm,"
                " log_traffic, created_at, teach) VALUES (?, ?, ?, 'llmops-x', '[\"m\"]', 0, ?,"
                " 1, '2026-01-01 00:00:00', 0)",
                (key_id, key_id, key_id, rpm),
            )
        for device, key_id in (("d1", "key_dev"), ("d2", "key_fast")):
            conn.exec_driver_sql(
                "INSERT INTO serving_edge_devices (id, key_id, model, created_at)"
                " VALUES (?, ?, 'm@edge', '2026-01-01 00:00:00')",
                (device, key_id),
            )
    upgrade("s0011")
    with engine.connect() as conn:  # as s0011 left them, read without the later columns
        rows = conn.exec_driver_sql("SELECT id, device, rpm FROM serving_api_keys").all()
    keys = {key_id: (bool(device), rpm) for key_id, device, rpm in rows}
    assert keys == {"key_dev": (True, DEVICE_RPM), "key_fast": (True, 5), "key_app": (False, None)}
