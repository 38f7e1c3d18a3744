"""Who may reach what on the edge routes: a device key fetches its own model's bundles and
reports for its own device only; it cannot list the fleet, fetch another model's files, a
non-ONNX version's files or any file by path; the fleet is for admin keys."""

from pathlib import Path

import pytest

from llmops_edge.cli import main as edge_main
from llmops_edge.device import Device
from serving.edge.protocol import DeviceRequest
from tests.edge.conftest import EdgeGateway

pytestmark = pytest.mark.slow


def test_a_device_key_reaches_its_bundle_and_nothing_else(
    edge_gateway: EdgeGateway, onnx_dir: Path, random_model_dir: Path, tmp_path: Path
) -> None:
    mine = edge_gateway.publish("mine-onnx", onnx_dir)
    theirs = edge_gateway.publish("theirs-onnx", onnx_dir)
    weights = edge_gateway.gateway.registry.register("mine-onnx", random_model_dir)  # not onnx
    _, key = edge_gateway.enroll("kiosk-9", "mine-onnx@edge", tmp_path)
    get = edge_gateway.get
    files = edge_gateway.gateway.registry.artifacts.load_manifest(mine.artifact_digest).files
    sha = files[0].sha256

    assert get("/v1/edge/bundles/mine-onnx@edge", key).status_code == 200
    assert get(f"/v1/edge/bundles/{mine.ref}/files/{sha}", key).status_code == 200
    assert get("/v1/edge/device", key).json()["id"] == "kiosk-9"

    denied = get("/v1/edge/devices", key)
    assert (
        denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_permissions"
    )
    assert get("/v1/registry/models", key).status_code == 403
    other = get(f"/v1/edge/bundles/{theirs.ref}/files/{sha}", key)  # the same bytes, another model
    assert (
        other.status_code == 403 and "may not fetch bundles of" in other.json()["error"]["message"]
    )
    assert get("/v1/edge/bundles/theirs-onnx@edge", key).status_code == 403
    hf_sha = edge_gateway.gateway.registry.artifacts.load_manifest(weights.artifact_digest)
    not_onnx = get(f"/v1/edge/bundles/{weights.ref}/files/{hf_sha.files[0].sha256}", key)
    assert not_onnx.status_code == 400 and not_onnx.json()["error"]["code"] == "not_an_edge_bundle"
    assert get(f"/v1/edge/bundles/{mine.ref}/files/{'0' * 64}", key).status_code == 404
    for path in ("..%2F..%2Fregistry.db", "registry.db", sha.upper()):
        assert get(f"/v1/edge/bundles/{mine.ref}/files/{path}", key).status_code in (400, 404)
    assert get(f"/v1/edge/bundles/mine-onnx@edge/files/{sha}", key).status_code == 400

    report = {"device_id": "kiosk-1", "model": "mine-onnx@edge", "status": "installed"}
    spoofed = edge_gateway.post("/v1/edge/reports", key, report)
    assert spoofed.status_code == 403 and "belongs to device 'kiosk-9'" in spoofed.text
    own = edge_gateway.post("/v1/edge/reports", key, {**report, "device_id": "kiosk-9"})
    assert own.status_code == 200 and own.json()["status"] == "installed"


def test_other_keys_and_removed_devices(edge_gateway: EdgeGateway, tmp_path: Path) -> None:
    get, admin = edge_gateway.get, edge_gateway.admin_key
    _, app_key = edge_gateway.gateway.keys.create("app")  # every model, but not a device
    assert get("/v1/edge/bundles/demo-onnx@edge", None).status_code == 401
    refused = get("/v1/edge/bundles/demo-onnx@edge", app_key)
    assert refused.status_code == 403 and "is not a device key" in refused.text
    assert get("/v1/edge/devices", app_key).status_code == 403
    assert get("/v1/edge/public_key", app_key).json()["algorithm"] == "ed25519"

    added = edge_gateway.post("/v1/edge/devices", admin, {"id": "kiosk-x", "model": "a-onnx@edge"})
    assert added.status_code == 201, added.text
    device_key = added.json()["key"]
    assert get("/v1/edge/device", device_key).json()["id"] == "kiosk-x"
    again = edge_gateway.post("/v1/edge/devices", admin, {"id": "kiosk-x", "model": "a-onnx@edge"})
    assert again.status_code == 409
    removed = edge_gateway.delete("/v1/edge/devices/kiosk-x", admin)
    assert removed.status_code == 200 and removed.json()["removed_at"] is not None
    assert get("/v1/edge/device", device_key).status_code == 401
    assert "kiosk-x" not in {d["id"] for d in get("/v1/edge/devices", admin).json()["data"]}


def test_enrolling_by_fetching_the_key_checks_its_fingerprint(
    edge_gateway: EdgeGateway, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    created = edge_gateway.gateway.edge.add(DeviceRequest(id="kiosk-f", model="f-onnx@edge"))
    (tmp_path / "key").write_text(created.key)
    enroll = ["enroll", "--gateway", edge_gateway.url, "--api-key-file", str(tmp_path / "key")]
    device = tmp_path / "device"
    with pytest.raises(SystemExit):
        edge_main([*enroll, "--dir", str(device), "--fingerprint", "sha256:" + "0" * 64])
    assert "nothing was enrolled" in capsys.readouterr().err and not device.exists()
    with pytest.raises(SystemExit):
        edge_main(["enroll", "--gateway", "http://192.0.2.1:8000", "--dir", str(device)])
    assert "plain http to another machine" in capsys.readouterr().err

    fingerprint = edge_gateway.gateway.edge.public_key().key_id
    edge_main([*enroll, "--dir", str(device), "--fingerprint", fingerprint])
    assert Device.load(device).public_key.fingerprint == fingerprint
    assert Device.load(device).device_id == "kiosk-f"
    assert (device / "device.json").stat().st_mode & 0o077 == 0
